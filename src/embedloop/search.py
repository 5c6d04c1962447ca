"""Queries against the live index, with the model that built it."""

from __future__ import annotations

from dataclasses import dataclass

from embedloop.config import Settings
from embedloop.encoding import encode, load_model, pick_device
from embedloop.errors import IndexUnavailable
from embedloop.index import IndexStore, LoadedIndex
from embedloop.registry import CHAMPION, Registry


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    title: str


class Searcher:
    """Loads the champion and its index once; each query is then one encode and one
    FAISS search (what `embedloop search` does, and what a service would keep warm)."""

    def __init__(self, settings: Settings) -> None:
        registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                            settings.artifact_root)
        champion = registry.version_for_alias(CHAMPION)
        if champion is None:
            raise IndexUnavailable("no champion yet: run `embedloop retrain --reason ...` first")
        self.index = _champions_index(IndexStore(settings.index_dir), settings.model_name,
                                      champion)
        self.model = load_model(registry.local_model_path(champion, settings.state_dir / "models"),
                                pick_device(), settings.max_seq_length)
        titles = self.index.titles or [""] * len(self.index.doc_ids)
        self.titles = dict(zip(self.index.doc_ids, titles, strict=True))

    def search(self, text: str, k: int) -> list[Hit]:
        if not text.strip():
            raise IndexUnavailable("the query is empty")
        # Encode the query as the corpus was encoded, so scores are comparable.
        vector = encode(self.model, [text], precision=self.index.manifest.precision)
        return [Hit(doc_id, score, self.titles.get(doc_id, ""))
                for doc_id, score in self.index.search(vector, k)[0]]


def _champions_index(store: IndexStore, model_name: str, champion: str) -> LoadedIndex:
    """The live index; or, if a promotion was cut off between moving the champion and
    swapping the index (the next run finishes it), the index the champion built."""
    live = store.load()
    if (live.manifest.model_name, live.manifest.model_version) != (model_name, champion):
        built = store.latest_for_model(model_name, champion)
        if built is not None:
            return store.load(built)
    live.require_model(model_name, champion)  # refuses a mismatch with a clear message
    return live


def search_live(settings: Settings, text: str, k: int) -> list[Hit]:
    """Refuses to search an index that the champion did not build."""
    return Searcher(settings).search(text, k)
