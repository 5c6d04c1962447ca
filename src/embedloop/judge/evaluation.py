"""Retrieval metrics, per query and averaged. Pure; matches trec_eval/BEIR conventions
(linear gains, log2 discount, ideal DCG from all judged-relevant documents). Gains may
be graded floats (the click model's debiased relevance) as well as integers."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if relevant.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted) if wanted else 0.0


def average_precision_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    if not wanted:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranked[:k]):
        if d in wanted:
            hits += 1
            total += hits / (i + 1)
    return total / len(wanted)


def query_metrics(ranked: Sequence[str], relevant: Mapping[str, float]) -> dict[str, float]:
    return {"ndcg@10": ndcg_at_k(ranked, relevant, 10), "mrr@10": mrr_at_k(ranked, relevant, 10),
            "recall@10": recall_at_k(ranked, relevant, 10),
            "recall@100": recall_at_k(ranked, relevant, 100),
            "map@100": average_precision_at_k(ranked, relevant, 100)}


@dataclass(frozen=True)
class EvalReport:
    """Mean metrics and the per-query table they came from."""

    per_query: pd.DataFrame  # query + one column per metric
    primary_metric: str = "ndcg@10"
    greater_is_better: bool = True
    rankings: Mapping[str, Sequence[str]] = field(default_factory=dict)  # what was scored
    # a hybrid ranker's sides scored alone ("dense", "bm25"): what the fusion is made of
    sides: Mapping[str, EvalReport] = field(default_factory=dict)

    @property
    def means(self) -> dict[str, float]:
        return {m: float(self.per_query[m].mean()) if len(self.per_query) else 0.0
                for m in METRICS}

    @property
    def primary(self) -> float:
        return self.means[self.primary_metric]

    @property
    def n_queries(self) -> int:
        return len(self.per_query)

    def subset(self, queries: Mapping[str, object] | set[str]) -> EvalReport:
        """The same scores, restricted to `queries` (e.g. the pool's recent slice)."""
        keep = self.per_query["query"].isin(set(queries))
        return EvalReport(self.per_query[keep].reset_index(drop=True), self.primary_metric,
                          self.greater_is_better,
                          {q: r for q, r in self.rankings.items() if q in queries})


def evaluate_rankings(rankings: Mapping[str, Sequence[str]],
                      qrels: Mapping[str, Mapping[str, float]],
                      primary_metric: str = "ndcg@10") -> EvalReport:
    """Every judged query counts; one the system returned nothing for scores zero."""
    rows = [{"query": q, **query_metrics(rankings.get(q, []), rel)}
            for q, rel in sorted(qrels.items())]
    return EvalReport(per_query=pd.DataFrame(rows, columns=["query", *METRICS]),
                      primary_metric=primary_metric, rankings=dict(rankings))


def condensed(report: EvalReport, qrels: Mapping[str, Mapping[str, float]],
              shown: Mapping[str, Collection[str]]) -> EvalReport:
    """The same rankings scored as condensed lists (Sakai 2007): each keeps only the
    documents users were shown for that query (`shown`, by query), in the order it ranked
    them; a shown document it ranked below its evaluation depth follows, in id order.
    Labels that come from clicks exist only for shown documents, so a document nobody
    was shown is neither credited nor blamed."""
    rankings = {}
    for query in qrels:
        seen = set(shown.get(query, ()))
        ranked = [d for d in report.rankings.get(query, []) if d in seen]
        rankings[query] = ranked + sorted(seen.difference(ranked))
    return evaluate_rankings(rankings, qrels, report.primary_metric)
