"""The Milvus backend on a real Milvus Lite (embedded, one file per test): versioned
collections, the `live` alias, search and stored vectors, and what a SIGKILL midway
through a save leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedloop.errors import IndexUnavailable
from embedloop.index.faiss_index import FaissIndex, IndexSpec

pytest.importorskip("pymilvus")

from embedloop.index.milvus_index import MilvusIndexStore  # noqa: E402


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def save(store: MilvusIndexStore, model_version: str, vectors: np.ndarray) -> str:
    ids = [f"d{i}" for i in range(len(vectors))]
    index = store.build(vectors, ids, precision="fp32", titles=[f"title {i}" for i in ids])
    return store.save_version(index, model_name="m", model_version=model_version,
                              corpus_fingerprint="c").version


def test_versions_are_collections_and_live_is_an_alias(tmp_path: Path) -> None:
    store = MilvusIndexStore(str(tmp_path / "milvus.db"), "my model")
    first, second = unit_vectors(300, seed=1), unit_vectors(300, seed=2)
    assert save(store, "1", first) == "v0001" and store.live_version() is None
    store.set_live("v0001")
    assert save(store, "2", second) == "v0002"
    assert store.versions() == ["v0001", "v0002"] and store.live_version() == "v0001"
    assert set(store.client.list_collections()) >= {"embedloop_my_model_v0001",
                                                    "embedloop_my_model_v0002"}
    manifest = store.manifest("v0002")
    assert (manifest.model_version, manifest.n_docs, manifest.dim) == ("2", 300, 16)
    assert store.latest_for_model("m", "1") == "v0001"

    # The live version answers as exact search over the same vectors would.
    queries = unit_vectors(20, seed=3)
    exact = FaissIndex.build(first, [f"d{i}" for i in range(300)], "fp32", IndexSpec("flat-ip"))
    live = store.load()
    assert live.manifest is not None and live.manifest.version == "v0001"
    assert live.titles is not None and live.titles[5] == "title d5"
    got, want = live.search(queries, 5), exact.search(queries, 5)
    assert [[d for d, _ in hits] for hits in got] == [[d for d, _ in hits] for hits in want]
    np.testing.assert_allclose([s for hits in got for _, s in hits],
                               [s for hits in want for _, s in hits], atol=1e-5)
    # the stored vectors, for query-side training
    np.testing.assert_allclose(live.vectors(["d7", "d0"]), first[[7, 0]], atol=1e-6)

    # one step moves every reader of the alias to the other version
    store.set_live("v0002")
    assert store.live_version() == "v0002"
    assert store.load().search(second[:1], 1)[0][0][0] == "d0"
    with pytest.raises(IndexUnavailable, match="does not exist"):
        store.set_live("v0009")
    with pytest.raises(IndexUnavailable, match="not an index version"):
        store.manifest("../v0001")


CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from embedloop.index.milvus_index import MilvusIndexStore
    store = MilvusIndexStore(sys.argv[1], "m")
    for seed in (1, 2, 3):
        if seed == 3 and len(sys.argv) > 2:  # killed at this point of the third save
            os.environ["EMBEDLOOP_CRASH_AT"] = sys.argv[2]
        v = np.random.default_rng(seed).normal(size=(50, 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index = store.build(v, [f"s{seed}-{i}" for i in range(50)], precision="fp32")
        version = store.save_version(index, model_name="m", model_version=str(seed),
                                     corpus_fingerprint="c").version
        if seed == 1:
            store.set_live(version)
        print(json.dumps({"saved": version}), flush=True)
""")


def saved_by(child: subprocess.CompletedProcess[str]) -> list[str]:
    assert child.returncode == -9, child.stderr[-2000:]  # SIGKILL, as an OOM kill would
    return [json.loads(line)["saved"] for line in child.stdout.splitlines()]


def test_the_incumbent_is_scored_on_an_index_built_as_a_candidates_is(tmp_path: Path) -> None:
    """The judge scores a candidate on `build`'s exact in-memory index; the stored live
    version (HNSW on a Milvus server) is read back the same way, so neither side gets the
    approximate one."""
    store = MilvusIndexStore(str(tmp_path / "milvus.db"), "m")
    vectors = unit_vectors(300, seed=4)
    store.set_live(save(store, "1", vectors))
    live = store.load()
    judged = store.as_built(live)
    candidate = store.build(vectors, [f"d{i}" for i in range(300)], precision="fp32")
    assert (type(judged), judged.kind) == (type(candidate), candidate.kind) == (FaissIndex,
                                                                                 "flat-ip")
    assert judged.manifest == live.manifest and judged.titles == live.titles
    queries = unit_vectors(10, seed=5)
    assert judged.search(queries, 5) == candidate.search(queries, 5)


def test_a_save_killed_midway_is_never_listed_and_its_number_is_reused(tmp_path: Path) -> None:
    db = str(tmp_path / "milvus.db")
    # Milvus Lite holds its file for one process: the child saves and is killed, then
    # this process opens what the kill left behind.
    child = subprocess.run([sys.executable, "-c", CHILD, db, "milvus upload"],
                           capture_output=True, text=True, timeout=300)
    assert saved_by(child) == ["v0001", "v0002"]
    store = MilvusIndexStore(db, "m")
    assert store.versions() == ["v0001", "v0002"] and store.live_version() == "v0001"
    assert store._all_versions() == ["v0001", "v0002", "v0003"]  # cut off, unlisted
    with pytest.raises(IndexUnavailable, match="missing or damaged"):
        store.load("v0003")
    vectors = unit_vectors(40, dim=8)
    assert save(store, "7", vectors) == "v0003"  # dropped and written again, complete
    assert store.manifest("v0003").n_docs == 40
    store.set_live("v0003")
    assert store.load().search(vectors[3:4], 1)[0][0][0] == "d3"


def test_the_store_answers_for_what_a_killed_process_completed(tmp_path: Path) -> None:
    db = str(tmp_path / "milvus.db")
    child = subprocess.run([sys.executable, "-c", CHILD + textwrap.dedent("""
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    """), db], capture_output=True, text=True, timeout=300)
    saved = saved_by(child)
    assert saved == ["v0001", "v0002", "v0003"]
    store = MilvusIndexStore(db, "m")
    assert store.versions() == saved and store.live_version() == "v0001"
    assert store.load().doc_ids[:2] == ["s1-0", "s1-1"]
    assert store.load("v0003").manifest.model_version == "3"


def test_a_hybrid_version_serves_the_bm25_it_was_judged_with(tmp_path: Path) -> None:
    """The BM25 side goes into Milvus as each document's weight vector: the version,
    loaded back, ranks each side and the fused list as the in-memory index it was judged
    on (bm25s), through the same fusion."""
    from embedloop.search.fusion import Fusion
    from embedloop.search.hybrid import LexicalSpec
    from embedloop.search.sparse import Analyzer

    texts = ["vitamin D and bone fractures in the elderly", "BRCA1 mutation breast cancer",
             "microRNA regulation of T cell differentiation", "北京的公园和体育大学",
             "bone density loss after vitamin deficiency", "", "T cell receptor signalling"]
    ids = [f"d{i}" for i in range(len(texts))]
    store = MilvusIndexStore(str(tmp_path / "milvus.db"), "m")
    judged = store.build(unit_vectors(len(texts)), ids, precision="fp32")
    judged.lexical = LexicalSpec(Analyzer(), Fusion(weight=0.3, depth=5)).build(texts, ids)
    manifest = store.save_version(judged, model_name="m", model_version="1",
                                  corpus_fingerprint="c")
    assert manifest.lexical == judged.lexical.spec.describe()
    served = store.load(manifest.version)
    assert served.lexical is not None and served.lexical.spec == judged.lexical.spec
    queries = ["vitamin D bone", "T cell", "体育大学", "nothing matches zzz"]
    got, want = served.lexical.sparse.search(queries, 5), judged.lexical.sparse.search(queries, 5)
    assert [[d for d, _ in hits] for hits in got] == [[d for d, _ in hits] for hits in want]
    np.testing.assert_allclose([s for hits in got for _, s in hits],
                               [s for hits in want for _, s in hits], rtol=1e-5)
    vectors = unit_vectors(len(queries), seed=9)
    fused = served.lexical.fuse(served.search(vectors, 5), got, 3)
    assert fused == judged.lexical.fuse(judged.search(vectors, 5), want, 3)
    # what a candidate is judged on: the live version read back, its BM25 side with it
    assert store.as_built(served).lexical is served.lexical
