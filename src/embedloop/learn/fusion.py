"""The fusion weight learned from clicks: the dense side's share in a hybrid ranker,
chosen per candidate on the tune queries (training queries never trained on), scored
over the documents users were shown, as the judge scores the pool.

    candidate's two sides ranked once for the tune queries -> fused at every weight ->
    condensed NDCG@10 per query -> the best weight, if credibly better than the
    incumbent's; else the incumbent's

Why "credibly": click labels on a few dozen queries cannot tell weights a point apart,
and a weight that chases their noise is worse on the queries to come (BENCHMARKS.md:
the weight learned from clicks). The weight then moves with the model as one ranker
version (production/registry.py FUSION_WEIGHT), judged by the same evidence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from embedloop.index.build import with_fusion
from embedloop.judge.evaluation import condensed, evaluate_rankings
from embedloop.judge.significance import randomization_p_value
from embedloop.learn.pairs import TrainingData
from embedloop.search.fusion import Fusion
from embedloop.search.retrieval import EVAL_DEPTH, Retriever, Sides

Qrels = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class FusionChoice:
    """What the recipe chose for a candidate's fusion, and why."""

    weight: float
    incumbent: float  # the weight the incumbent is judged with
    scores: dict[float, float]  # weight -> mean condensed metric on the tune queries
    p_not_better: float  # p that the chosen weight ranks no better than the incumbent's
    tune_queries: int
    why: str


def fusion_scores(sides: Sides, queries: Sequence[str], qrels: Qrels,
                  shown: Mapping[str, Collection[str]], fusion: Fusion,
                  weights: Sequence[float], metric: str = "ndcg@10"
                  ) -> dict[float, np.ndarray]:
    """Per weight, each query's `metric` (the queries in sorted order) for `sides`, the
    two rankings of `queries`, fused as `fusion` is but with that weight. Condensed to
    what users were shown when `shown` is given (click labels); whole lists otherwise."""
    keys = sorted(queries)
    order = {q: i for i, q in enumerate(queries)}
    out = {}
    for weight in sorted(set(weights)):
        fused = replace(fusion, weight=weight, depth=max(fusion.depth, EVAL_DEPTH))
        rankings = {q: [d for d, _ in fused.fuse(sides.dense[order[q]], sides.bm25[order[q]],
                                                 EVAL_DEPTH)] for q in keys}
        report = evaluate_rankings(rankings, {q: qrels[q] for q in keys}, metric)
        if shown:
            report = condensed(report, {q: qrels[q] for q in keys}, shown)
        out[float(weight)] = report.per_query[metric].to_numpy()
    return out


def choose_fusion_weight(per_query: Mapping[float, np.ndarray], incumbent: float,
                         alpha: float = 0.05) -> FusionChoice:
    """The weight whose fusion ranks the tune queries best, if it is credibly better than
    the incumbent's (one-sided paired sign-flip test at `alpha`); else the incumbent's.
    Equal means go to the weight nearest the incumbent's. `per_query` must hold it."""
    means = {w: float(np.mean(v)) for w, v in sorted(per_query.items())}
    best = max(means, key=lambda w: (round(means[w], 12), -abs(w - incumbent)))
    p = 1.0 if best == incumbent else randomization_p_value(per_query[best]
                                                            - per_query[incumbent])
    n = len(per_query[incumbent])
    versus = (f"{best:g} ranks the {n} tune queries at {means[best]:.4f}, the incumbent's "
              f"{incumbent:g} at {means[incumbent]:.4f}")
    if best == incumbent:
        return FusionChoice(incumbent, incumbent, means, 1.0, n,
                            f"kept {incumbent:g}: no weight ranks the {n} tune queries better "
                            f"({means[incumbent]:.4f})")
    if p < alpha:
        return FusionChoice(best, incumbent, means, p, n,
                            f"{best:g}: {versus} (p not better {p:.3f} < {alpha:g})")
    return FusionChoice(incumbent, incumbent, means, p, n,
                        f"kept {incumbent:g}: {versus}, not credibly better "
                        f"(p {p:.3f} >= {alpha:g})")


def tune_fusion(candidate: Retriever, incumbent_weight: float, weights: Sequence[float],
                data: TrainingData, min_queries: int, alpha: float, metric: str = "ndcg@10"
                ) -> tuple[Retriever, FusionChoice]:
    """`candidate` (a hybrid ranker) fused with the weight the tune queries choose, starting
    from the incumbent's; with fewer than `min_queries` tune queries, the incumbent's."""
    assert candidate.index.lexical is not None, "a dense candidate has no fusion"
    qrels = data.tune_qrels
    if len(qrels) < min_queries:
        return (Retriever(candidate.model, with_fusion(candidate.index, incumbent_weight),
                          candidate.batch_size),
                FusionChoice(incumbent_weight, incumbent_weight, {}, 1.0, len(qrels),
                             f"kept {incumbent_weight:g}: {len(qrels)} tune queries are too "
                             f"few to choose on (fewer than {min_queries})"))
    fusion = candidate.index.lexical.fusion
    queries = sorted(qrels)
    sides = candidate.sides(queries, max(fusion.depth, EVAL_DEPTH))
    per_query = fusion_scores(sides, queries, qrels, data.shown_for(qrels), fusion,
                              sorted({incumbent_weight, *weights}), metric)
    choice = choose_fusion_weight(per_query, incumbent_weight, alpha)
    return Retriever(candidate.model, with_fusion(candidate.index, choice.weight),
                     candidate.batch_size), choice
