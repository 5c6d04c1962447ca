"""One query against the live index, with the model that built it."""

from __future__ import annotations

from dataclasses import dataclass

from embedloop.config import Settings
from embedloop.corpus import load_corpus
from embedloop.encoding import encode, load_model, pick_device
from embedloop.errors import IndexUnavailable
from embedloop.index import IndexStore
from embedloop.registry import CHAMPION, Registry


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    title: str


def search_live(settings: Settings, text: str, k: int) -> list[Hit]:
    """Refuses to search an index that the champion did not build."""
    if not text.strip():
        raise IndexUnavailable("the query is empty")
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    champion = registry.version_for_alias(CHAMPION)
    if champion is None:
        raise IndexUnavailable("no champion yet: run `embedloop retrain --reason ...` first")
    live = IndexStore(settings.index_dir).load()
    live.require_model(settings.model_name, champion)
    model = load_model(registry.local_model_path(champion, settings.state_dir / "models"),
                       pick_device(), settings.max_seq_length)
    # Encode the query as the corpus was encoded, so scores are comparable.
    vector = encode(model, [text], precision=live.manifest.precision)
    titles: dict[str, str] = {}
    if settings.corpus:
        try:
            corpus = load_corpus(settings.corpus)
            titles = dict(zip(corpus["doc_id"], corpus["title"], strict=True))
        except Exception:  # titles are a courtesy; the ids are the answer
            titles = {}
    return [Hit(doc_id, score, titles.get(doc_id, ""))
            for doc_id, score in live.search(vector, k)[0]]
