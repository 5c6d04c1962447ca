from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedloop.errors import IndexUnavailable
from embedloop.index.faiss_index import (
    FaissIndex,
    FaissIndexStore,
    IndexSpec,
    build_faiss_index,
    choose_index,
)


def unit(rows: list[list[float]]) -> np.ndarray:
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(store: FaissIndexStore, model_version: str, vectors: np.ndarray,
          titles: list[str] | None = None, spec: IndexSpec | None = None) -> str:
    ids = [f"d{i}" for i in range(len(vectors))]
    index = FaissIndex.build(vectors, ids, "fp32", spec, titles)
    return store.save_version(index, model_name="m", model_version=model_version,
                              corpus_fingerprint="c").version


def test_publish_swap_and_search(tmp_path: Path) -> None:
    store = FaissIndexStore(tmp_path)
    v1 = write(store, "1", unit([[1, 0], [0, 1], [1, 1]]))
    assert store.live_version() is None  # written is not live
    store.set_live(v1)
    live = store.load()
    hits = live.search(unit([[1, 0.1]]), k=2)[0]
    assert [d for d, _ in hits] == ["d0", "d2"]
    assert hits[0][1] == pytest.approx(float(unit([[1, 0.1]])[0] @ unit([[1, 0]])[0]))

    v2 = write(store, "2", unit([[0, 1], [1, 0]]))
    store.set_live(v2)
    assert (v1, v2) == ("v0001", "v0002")
    assert os.readlink(store.live_link) == "versions/v0002"
    assert store.latest_for_model("m", "1") == "v0001"  # kept for rollback
    assert store.load().manifest.model_version == "2"


def test_searching_with_another_model_is_refused(tmp_path: Path) -> None:
    store = FaissIndexStore(tmp_path)
    store.set_live(write(store, "3", unit([[1, 0]])))
    store.load().require_model("m", "3")
    with pytest.raises(IndexUnavailable, match="built by m v3, not m v4"):
        store.load().require_model("m", "4")


def test_missing_and_damaged_indexes_are_clear_errors(tmp_path: Path) -> None:
    store = FaissIndexStore(tmp_path)
    with pytest.raises(IndexUnavailable, match="no live index yet"):
        store.load()
    version = write(store, "1", unit([[1, 0], [0, 1]]))
    store.set_live(version)
    (tmp_path / "versions" / version / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexUnavailable, match="damaged"):
        store.load()
    with pytest.raises(IndexUnavailable, match="does not exist"):
        store.set_live("v0099")


def test_index_type_follows_corpus_size() -> None:
    assert choose_index(5_183).kind == "flat-ip"
    assert choose_index(150_000).kind == "hnsw-ip"
    big = choose_index(4_000_000)
    assert big.kind == "ivf-flat-ip" and big.params["nlist"] == 8192  # ~4 sqrt(4M), power of 2
    assert big.params["nprobe"] == 128


@pytest.mark.parametrize("spec", [IndexSpec("hnsw-ip", {"M": 16, "efConstruction": 80,
                                                        "efSearch": 64}),
                                  IndexSpec("ivf-flat-ip", {"nlist": 32, "nprobe": 8})])
def test_approximate_indexes_find_what_exact_search_finds(tmp_path: Path,
                                                          spec: IndexSpec) -> None:
    """Built through the store, reloaded from disk with the manifest's search parameters:
    recall@10 against exact search stays high on clustered 64-d vectors."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 64))
    docs = centres[rng.integers(0, 40, 4_000)] + 0.3 * rng.normal(size=(4_000, 64))
    docs = (docs / np.linalg.norm(docs, axis=1, keepdims=True)).astype(np.float32)
    queries = docs[rng.choice(4_000, 100, replace=False)] + 0.05 * rng.normal(size=(100, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    store = FaissIndexStore(tmp_path)
    version = write(store, "1", docs, spec=spec)
    loaded = store.load(version)
    assert loaded.manifest is not None
    assert (loaded.manifest.kind, loaded.manifest.params) == (spec.kind, spec.params)
    exact = build_faiss_index(docs).search(queries, 10)[1]
    approx = loaded.index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9


@pytest.mark.parametrize("name", ["../../etc", "v0001/../../x", "/tmp", "live", ""])
def test_only_version_names_become_paths(tmp_path: Path, name: str) -> None:
    store = FaissIndexStore(tmp_path / "indexes")
    write(store, "1", unit([[1, 0], [0, 1]]))
    with pytest.raises(IndexUnavailable, match="not an index version"):
        store.load(name) if name else store.set_live(name)


def test_titles_travel_with_the_index(tmp_path: Path) -> None:
    store = FaissIndexStore(tmp_path)
    version = write(store, "1", unit([[1, 0], [0, 1]]), titles=["Alpha", "Beta"])
    assert store.load(version).titles == ["Alpha", "Beta"]
