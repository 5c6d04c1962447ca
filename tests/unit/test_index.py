from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedloop.errors import IndexUnavailable
from embedloop.index import IndexStore


def unit(rows: list[list[float]]) -> np.ndarray:
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(store: IndexStore, model_version: str, vectors: np.ndarray) -> str:
    return store.write_version(vectors, [f"d{i}" for i in range(len(vectors))],
                               model_name="m", model_version=model_version,
                               corpus_fingerprint="c", precision="fp32").version


def test_publish_swap_and_search(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
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
    store = IndexStore(tmp_path)
    store.set_live(write(store, "3", unit([[1, 0]])))
    store.load().require_model("m", "3")
    with pytest.raises(IndexUnavailable, match="built by m v3, not m v4"):
        store.load().require_model("m", "4")


def test_missing_and_damaged_indexes_are_clear_errors(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    with pytest.raises(IndexUnavailable, match="no live index yet"):
        store.load()
    version = write(store, "1", unit([[1, 0], [0, 1]]))
    store.set_live(version)
    (tmp_path / "versions" / version / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexUnavailable, match="damaged"):
        store.load()
    with pytest.raises(IndexUnavailable, match="does not exist"):
        store.set_live("v0099")
