"""Fusing a dense and a sparse ranking into one: pure functions, no I/O.

Each side contributes its top `depth` documents. Convex fusion (the default) scales each
side's scores to [0, 1] over its own list (min-max: the best is 1, the last 0) and adds
them as `weight * dense + (1 - weight) * sparse`; a document one side did not return
scores 0 there. Reciprocal rank fusion adds 1 / (60 + rank) from each side (Cormack et
al., 2009) and ignores the scores. Equal fused scores break by document id: interleaving
needs a ranker that lists the same documents in the same order every time.

`weight` is the dense side's share: 1 is dense only, 0 is BM25 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RRF_K = 60
FUSION_METHODS = ("convex", "rrf")

Ranked = Sequence[tuple[str, float]]  # (doc id, score), best first


@dataclass(frozen=True)
class Fusion:
    """How the two sides become one list: part of a ranker version, judged with it."""

    weight: float = 0.5
    method: str = "convex"
    depth: int = 100  # documents each side contributes

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must lie in [0, 1], not {self.weight}")
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS}, "
                             f"not {self.method!r}")
        if self.depth < 1:
            raise ValueError(f"fusion depth must be at least 1, not {self.depth}")

    def fuse(self, dense: Ranked, sparse: Ranked, k: int) -> list[tuple[str, float]]:
        """The fused top k of one query's two rankings. In numpy, on the search path of
        every query: the same float64 arithmetic as `fuse_reference`, so the same list."""
        dense, sparse = dense[:self.depth], sparse[:self.depth]
        ids = [doc for doc, _ in dense]
        where = {doc: i for i, doc in enumerate(ids)}
        rows = np.empty(len(sparse), dtype=np.int64)
        for j, (doc, _) in enumerate(sparse):
            i = where.get(doc)
            if i is None:
                i = where[doc] = len(ids)
                ids.append(doc)
            rows[j] = i
        a, b = np.zeros(len(ids)), np.zeros(len(ids))
        a[:len(dense)] = self._side([s for _, s in dense])
        b[rows] = self._side([s for _, s in sparse])
        fused = self.weight * a + (1 - self.weight) * b
        keep: Sequence[int] = range(len(ids))
        if len(ids) > k:  # the k best and whatever ties with the k-th, then in order
            kth = np.partition(fused, len(ids) - k)[len(ids) - k]
            keep = np.flatnonzero(fused >= kth).tolist()
        return sorted(((ids[i], float(fused[i])) for i in keep),
                      key=lambda item: (-item[1], item[0]))[:k]

    def _side(self, scores: list[float]) -> np.ndarray:
        """One side's contribution before weighting: min-max scaled, or 1 / (60 + rank)."""
        if self.method == "rrf":
            return 1.0 / (RRF_K + np.arange(1, len(scores) + 1, dtype=np.float64))
        values = np.array(scores, dtype=np.float64)
        if not len(values) or values.max() == values.min():
            return np.ones(len(values))
        return (values - values.min()) / (values.max() - values.min())

    def fuse_reference(self, dense: Ranked, sparse: Ranked, k: int
                       ) -> list[tuple[str, float]]:
        """`fuse` in plain Python, as the module docstring defines it (tests hold the two
        equal)."""
        dense, sparse = dense[:self.depth], sparse[:self.depth]
        if self.method == "rrf":
            a, b = reciprocal_ranks(dense), reciprocal_ranks(sparse)
        else:
            a, b = min_max(dense), min_max(sparse)
        fused = {doc: self.weight * a.get(doc, 0.0) + (1 - self.weight) * b.get(doc, 0.0)
                 for doc in a.keys() | b.keys()}
        return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]


def min_max(ranked: Ranked) -> dict[str, float]:
    """Scores scaled to [0, 1] over this list; a list of equal scores is all 1."""
    if not ranked:
        return {}
    scores = [s for _, s in ranked]
    low, high = min(scores), max(scores)
    if high == low:
        return {doc: 1.0 for doc, _ in ranked}
    return {doc: (s - low) / (high - low) for doc, s in ranked}


def reciprocal_ranks(ranked: Ranked) -> dict[str, float]:
    return {doc: 1.0 / (RRF_K + rank) for rank, (doc, _) in enumerate(ranked, start=1)}
