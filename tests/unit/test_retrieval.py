"""The retrieval seam on a tiny 2-d world: a fake encoder (a lookup table of unit
vectors) and a real FAISS index, so the ranking and the metric maths are checkable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from embedloop.index.faiss_index import FaissIndex
from embedloop.search.retrieval import Retriever, evaluate_retrieval

ANGLES = {"north": 90, "east": 0, "north-east": 45, "west": 180}


class AngleEncoder:
    """Encodes a compass word as the unit vector pointing that way."""

    device = "cpu"

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        radians = np.deg2rad([ANGLES[t] for t in texts])
        return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)

    encode_query = encode_document = encode  # symmetric: one encoder for both sides


@pytest.fixture
def retriever() -> Retriever:
    docs = AngleEncoder().encode(["east", "north-east", "north"])
    index = FaissIndex.build(docs, ["E", "NE", "N"], "fp32", titles=["East", "NE", "North"])
    return Retriever(AngleEncoder(), index)


def test_search_ranks_by_cosine_and_names_each_hit(retriever: Retriever) -> None:
    hits = retriever.search(["north"], k=2)[0]
    assert [(h.doc_id, h.title) for h in hits] == [("N", "North"), ("NE", "NE")]
    assert hits[0].score == pytest.approx(1.0) and hits[1].score == pytest.approx(0.7071, 1e-4)
    assert retriever.rank(["west"], k=10) == [["N", "NE", "E"]]  # k beyond the corpus: all


def test_evaluation_scores_every_judged_query(retriever: Retriever) -> None:
    qrels = {"q1": {"N": 1}, "q2": {"E": 1}, "q3": {"N": 1}}
    texts = {"q1": "north", "q2": "north"}  # q3 has no text: skipped, not scored as zero
    report = evaluate_retrieval(retriever, qrels, texts=texts)
    assert list(report.per_query["query"]) == ["q1", "q2"]
    # q1 finds N first (1.0); q2 finds E third: NDCG 1/log2(4) = 0.5, MRR 1/3
    assert report.means["ndcg@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert report.means["mrr@10"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_the_pool_is_keyed_by_query_text(retriever: Retriever) -> None:
    report = evaluate_retrieval(retriever, {"east": {"E": 1.0}, "north": {"NE": 0.5}},
                                primary_metric="mrr@10")
    assert report.primary == pytest.approx((1.0 + 0.5) / 2)
