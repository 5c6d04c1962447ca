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
        """The fused top k of one query's two rankings."""
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
