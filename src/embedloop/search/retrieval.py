"""Retrieval: a model and the index of its document vectors, queries in, ranked documents
out; and its evaluation against judged queries. A hybrid index version brings its BM25
side and fusion (search/hybrid.py): the ranking is then the fused one.

The one place where queries are encoded and searched: the retrain flow (incumbent and
candidate, mining negatives), `embedloop search`, and the benchmarks all go through a
`Retriever`, so they rank alike and a reranker or a query prompt is added here once.
"""

from __future__ import annotations

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


@dataclass
class Retriever:
    """`model` searching `index`; the index must hold that model's document vectors."""

    model: Any  # SentenceTransformer
    index: VectorIndex
    batch_size: int = 64

    def __post_init__(self) -> None:
        self.index.require_prompts(self.model)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        # Queries are encoded as the documents were (the index's precision), so scores
        # are comparable.
        vectors = encode(self.model, queries, role="query", batch_size=self.batch_size,
                         precision=self.index.precision)
        lexical = self.index.lexical
        if lexical is None:
            ranked = self.index.search(vectors, k)
        else:  # each side's top `depth`, fused: the top k of any k <= depth agree
            ranked = lexical.fuse(self.index.search(vectors, max(k, lexical.fusion.depth)),
                                  queries, k)
        return [[Hit(doc_id, score, self._titles.get(doc_id, "")) for doc_id, score in hits]
                for hits in ranked]

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
    the texts, as in the evaluation pool). A judged query without text is skipped."""
    keys = sorted(q for q in qrels if texts is None or q in texts)
    rankings = retriever.rank([texts[q] if texts else q for q in keys], EVAL_DEPTH)
    return evaluate_rankings(dict(zip(keys, rankings, strict=True)),
                             {q: qrels[q] for q in keys}, primary_metric)
