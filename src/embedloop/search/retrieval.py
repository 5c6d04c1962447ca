"""Retrieval: a model and the index of its document vectors, queries in, ranked documents
out; and its evaluation against judged queries. A hybrid index version brings its BM25
side and fusion (search/hybrid.py): the ranking is then the fused one.

The one place where queries are encoded and searched: the retrain flow (incumbent and
candidate, mining negatives), `embedloop search`, and the benchmarks all go through a
`Retriever`, so they rank alike and a reranker or a query prompt is added here once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedloop.index.base import VectorIndex
from embedloop.judge.evaluation import EvalReport, evaluate_rankings
from embedloop.models.encoding import encode

EVAL_DEPTH = 100  # evaluation ranks the top 100: enough for every metric (recall@100)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    title: str = ""
    # A hybrid ranker's raw score on each side ("dense": cosine, "bm25"), on request;
    # None where that side did not rank the document in its top `depth`.
    sides: dict[str, float | None] | None = None


@dataclass(frozen=True)
class Sides:
    """Each side's own ranking of the same queries, before fusion: what the fused list
    is made of, and what per-side metrics and a learned fusion weight are scored on."""

    dense: list[list[tuple[str, float]]]
    bm25: list[list[tuple[str, float]]]


@dataclass
class Retriever:
    """`model` searching `index`; the index must hold that model's document vectors."""

    model: Any  # SentenceTransformer
    index: VectorIndex
    batch_size: int = 64

    def __post_init__(self) -> None:
        self.index.require_prompts(self.model)

    def search(self, queries: Sequence[str], k: int, sides: bool = False) -> list[list[Hit]]:
        """The top k of each query, best first; with `sides`, a hybrid ranker's hits carry
        each side's own score."""
        lexical = self.index.lexical
        if lexical is None:
            ranked = self.index.search(self._encode(queries), k)
            return [[Hit(d, s, self._titles.get(d, "")) for d, s in hits] for hits in ranked]
        # each side's top `depth`, fused: the top k of any k <= depth agree
        both = self.sides(queries, max(k, lexical.fusion.depth))
        fused = lexical.fuse(both.dense, both.bm25, k)
        if not sides:
            return [[Hit(d, s, self._titles.get(d, "")) for d, s in hits] for hits in fused]
        out = []
        for hits, dense, bm25 in zip(fused, both.dense, both.bm25, strict=True):
            on = {"dense": dict(dense), "bm25": dict(bm25)}
            out.append([Hit(d, s, self._titles.get(d, ""),
                            {side: scores.get(d) for side, scores in on.items()})
                        for d, s in hits])
        return out

    def sides(self, queries: Sequence[str], depth: int) -> Sides:
        """Each side's top `depth` of every query (a hybrid ranker's; the queries encoded
        once)."""
        lexical = self.index.lexical
        if lexical is None:
            raise ValueError("a dense index has one side: its lexical side is missing")
        return Sides(self.index.search(self._encode(queries), depth),
                     lexical.sparse.search(queries, depth))

    def _encode(self, queries: Sequence[str]) -> Any:
        # Queries are encoded as the documents were (the index's precision), so scores
        # are comparable.
        return encode(self.model, queries, role="query", batch_size=self.batch_size,
                      precision=self.index.precision)

    @functools.cached_property
    def _titles(self) -> dict[str, str]:
        return dict(zip(self.index.doc_ids, self.index.titles or [], strict=False))

    def rank(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return [[hit.doc_id for hit in hits] for hits in self.search(queries, k)]


def evaluate_retrieval(retriever: Retriever, qrels: Mapping[str, Mapping[str, float]], *,
                       texts: Mapping[str, str] | None = None,
                       primary_metric: str = "ndcg@10") -> EvalReport:
    """Rank the whole index for every judged query and score it against its labels.
    `qrels` is keyed by query id; `texts` maps ids to query text (default: the ids are
    the texts, as in the evaluation pool). A judged query without text is skipped. A
    hybrid ranker's report holds each side's too (`sides`), from the same search."""
    keys = sorted(q for q in qrels if texts is None or q in texts)
    queries = [texts[q] if texts else q for q in keys]
    judged = {q: qrels[q] for q in keys}

    def scored(ranked: Sequence[Sequence[tuple[str, float]]]) -> EvalReport:
        rankings = {q: [d for d, _ in hits[:EVAL_DEPTH]]
                    for q, hits in zip(keys, ranked, strict=True)}
        return evaluate_rankings(rankings, judged, primary_metric)

    lexical = retriever.index.lexical
    if lexical is None:
        return evaluate_rankings(dict(zip(keys, retriever.rank(queries, EVAL_DEPTH),
                                          strict=True)), judged, primary_metric)
    sides = retriever.sides(queries, max(EVAL_DEPTH, lexical.fusion.depth))
    return dataclasses.replace(scored(lexical.fuse(sides.dense, sides.bm25, EVAL_DEPTH)),
                               sides={"dense": scored(sides.dense), "bm25": scored(sides.bm25)})
