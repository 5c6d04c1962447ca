"""A hybrid index version: the real MiniLM's vectors and BM25 over a slice of SciFact,
saved in one FAISS version folder. Both sides move as one: they are saved together or not
at all, load together, and a version built otherwise gets the deployment's lexical side
over the same vectors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from embedloop.errors import IndexUnavailable
from embedloop.index.build import CorpusEncoding, index_corpus, with_lexical
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.ingest.corpus import document_texts
from embedloop.models.encoding import load_model
from embedloop.search.fusion import Fusion
from embedloop.search.hybrid import LexicalSpec
from embedloop.search.retrieval import Retriever
from embedloop.search.sparse import Analyzer, SparseIndex

QUERIES = ["vitamin D deficiency and bone fractures", "BRCA1 mutation breast cancer risk",
           "microRNA regulation of T cell differentiation"]
ENCODING = CorpusEncoding(batch_size=32, max_seq_length=32, backend="torch")
SPEC = LexicalSpec(Analyzer(), Fusion(weight=0.4, depth=20))


@pytest.fixture(scope="module")
def corpus(tiny_beir: Path) -> pd.DataFrame:
    frame = pd.read_json(tiny_beir / "corpus.jsonl", lines=True, dtype=False)
    return frame.rename(columns={"_id": "doc_id"})[["doc_id", "title", "text"]].head(60)


@pytest.fixture(scope="module")
def model(base_model_path: str) -> object:
    return load_model(base_model_path, "cpu", max_seq_length=32)


def build(store: FaissIndexStore, corpus: pd.DataFrame, model: object, path: str,
          lexical: LexicalSpec | None = SPEC):  # type: ignore[no-untyped-def]
    return index_corpus(store, corpus, model, path, "fp32", ENCODING, lexical=lexical)


def test_a_hybrid_version_saves_and_loads_both_sides_and_ranks_the_fused_list(
        tmp_path: Path, corpus: pd.DataFrame, model: object, base_model_path: str) -> None:
    store = FaissIndexStore(tmp_path)
    built = build(store, corpus, model, base_model_path)
    manifest = store.save_version(built, model_name="m", model_version="1",
                                  corpus_fingerprint="c")
    assert manifest.lexical == SPEC.describe()
    loaded = store.load(manifest.version)
    assert loaded.lexical is not None and loaded.lexical.spec == SPEC
    assert loaded.lexical.sparse.doc_ids == list(corpus["doc_id"])

    fused = Retriever(model, loaded).search(QUERIES, 5)
    assert [[h.doc_id for h in hits] for hits in fused] == Retriever(model, built).rank(
        QUERIES, 5)
    # ...and it is the fusion of the two sides' top `depth`, as search/fusion.py defines it
    dense_only = Retriever(model, store.load(manifest.version))
    dense_only.index.lexical = None
    dense = dense_only.search(QUERIES, 20)
    sparse = SparseIndex.build(document_texts(corpus), list(corpus["doc_id"])).search(QUERIES, 20)
    for hits, d, s in zip(fused, dense, sparse, strict=True):
        expected = SPEC.fusion.fuse([(h.doc_id, h.score) for h in d], s, 5)
        assert [(h.doc_id, round(h.score, 6)) for h in hits] == [
            (doc, round(score, 6)) for doc, score in expected]
    # the top k of a smaller k is the head of a larger one
    assert Retriever(model, loaded).rank(QUERIES, 3) == [r[:3] for r in
                                                         Retriever(model, loaded).rank(QUERIES, 10)]


def test_a_crash_between_the_dense_and_the_sparse_save_leaves_no_version(
        tmp_path: Path, corpus: pd.DataFrame, model: object, base_model_path: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = FaissIndexStore(tmp_path)
    first = store.save_version(build(store, corpus, model, base_model_path, None),
                               model_name="m", model_version="1", corpus_fingerprint="c")
    store.set_live(first.version)

    def disk_gone(self: SparseIndex, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "params.index.json").write_text("{")  # half written, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SparseIndex, "save", disk_gone)
    with pytest.raises(OSError, match="No space left"):
        store.save_version(build(store, corpus, model, base_model_path), model_name="m",
                           model_version="2", corpus_fingerprint="c")
    assert store.versions() == [first.version] and store.live_version() == first.version
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [first.version]
    assert store.load().lexical is None  # production searches as it did


def test_a_damaged_bm25_side_is_refused_by_name(
        tmp_path: Path, corpus: pd.DataFrame, model: object, base_model_path: str) -> None:
    store = FaissIndexStore(tmp_path)
    version = store.save_version(build(store, corpus, model, base_model_path),
                                 model_name="m", model_version="1",
                                 corpus_fingerprint="c").version
    next((tmp_path / "versions" / version / "sparse").glob("*.npy")).write_bytes(b"")
    with pytest.raises(IndexUnavailable, match=f"index {version}'s BM25 side is damaged"):
        store.load(version)


def test_a_version_built_otherwise_gets_the_deployments_lexical_side_over_its_vectors(
        tmp_path: Path, corpus: pd.DataFrame, model: object, base_model_path: str) -> None:
    store = FaissIndexStore(tmp_path)
    version = store.save_version(build(store, corpus, model, base_model_path, None),
                                 model_name="m", model_version="1",
                                 corpus_fingerprint="c").version
    dense = store.load(version)
    hybrid = with_lexical(dense, corpus, SPEC)
    # unsaved (publishing saves it as a new version), the same vectors, BM25 beside them
    assert hybrid.manifest is None and hybrid.index is dense.index
    assert hybrid.lexical is not None and hybrid.lexical.spec == SPEC
    assert dense.lexical is None  # the stored version is untouched
    assert with_lexical(hybrid, corpus, SPEC) is hybrid
    other = LexicalSpec(Analyzer(), Fusion(weight=0.7, depth=20))
    assert with_lexical(hybrid, corpus, other).lexical.spec == other  # type: ignore[union-attr]
    assert with_lexical(hybrid, corpus, None).lexical is None
