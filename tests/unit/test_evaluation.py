from __future__ import annotations

import math

import pytest

from embedloop.judge.evaluation import (
    average_precision_at_k,
    evaluate_rankings,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

LOG2_3 = math.log2(3)


@pytest.mark.parametrize("ranked, relevant, k, expected", [
    (["a", "b", "c"], {"a": 1}, 10, 1.0),                     # perfect
    (["x", "a"], {"a": 1}, 10, 1 / LOG2_3),                   # hit at rank 2
    (["x", "a", "b"], {"a": 1, "b": 1}, 10,                   # two hits, two relevant
     (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3)),
    (["x", "y"], {"a": 1}, 10, 0.0),                          # miss
    (["x", "a"], {"a": 1}, 1, 0.0),                           # hit outside the cutoff
    (["b", "a"], {"a": 2, "b": 1}, 10,                        # graded, linear gains
     (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3)),
    ([], {"a": 1}, 10, 0.0),                                  # nothing returned
])
def test_ndcg(ranked: list[str], relevant: dict[str, int], k: int, expected: float) -> None:
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(expected)


@pytest.mark.parametrize("ranked, relevant, k, expected", [
    (["a"], {"a": 1}, 10, 1.0),
    (["x", "y", "a"], {"a": 1}, 10, 1 / 3),
    (["x", "y", "a"], {"a": 1}, 2, 0.0),
    (["x", "b", "a"], {"a": 1, "b": 1}, 10, 1 / 2),           # first relevant counts
])
def test_mrr(ranked: list[str], relevant: dict[str, int], k: int, expected: float) -> None:
    assert mrr_at_k(ranked, relevant, k) == pytest.approx(expected)


@pytest.mark.parametrize("ranked, relevant, k, expected", [
    (["a", "x"], {"a": 1, "b": 1}, 10, 0.5),
    (["a", "b"], {"a": 1, "b": 1}, 1, 0.5),
    (["x"], {}, 10, 0.0),
])
def test_recall(ranked: list[str], relevant: dict[str, int], k: int, expected: float) -> None:
    assert recall_at_k(ranked, relevant, k) == pytest.approx(expected)


def test_average_precision_by_hand() -> None:
    # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / 2
    assert average_precision_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 100) == pytest.approx(5 / 6)
    # a relevant document never retrieved still counts in the denominator
    assert average_precision_at_k(["a"], {"a": 1, "b": 1}, 100) == pytest.approx(1 / 2)


def test_report_averages_over_every_judged_query() -> None:
    report = evaluate_rankings({"q1": ["a"], "q2": ["x"]}, {"q1": {"a": 1}, "q2": {"b": 1},
                                                              "q3": {"c": 1}})
    assert report.n_queries == 3  # q3 was never ranked: it scores zero, it is not skipped
    assert report.means["ndcg@10"] == pytest.approx(1 / 3)
    assert report.primary == pytest.approx(1 / 3)
    assert list(report.per_query["query"]) == ["q1", "q2", "q3"]


def test_condensed_lists_keep_only_what_users_were_shown() -> None:
    """Clicks label only shown documents: a document nobody was shown (here d9, lifted to
    the top by the candidate) is neither credited nor blamed; a shown one the ranking
    placed below its depth follows in id order."""
    from embedloop.judge.evaluation import condensed, evaluate_rankings

    qrels = {"q": {"d1": 1.0}}
    shown = {"q": {"d1", "d2", "d3"}}
    champion = evaluate_rankings({"q": ["d1", "d2", "d3", "d9"]}, qrels)
    candidate = evaluate_rankings({"q": ["d9", "d1", "d2"]}, qrels)  # d3 beyond its depth
    assert candidate.means["ndcg@10"] < champion.means["ndcg@10"] == 1.0  # d9 blamed
    c_champion, c_candidate = condensed(champion, qrels, shown), condensed(candidate, qrels,
                                                                           shown)
    assert c_champion.rankings["q"] == ["d1", "d2", "d3"]
    assert c_candidate.rankings["q"] == ["d1", "d2", "d3"]
    assert c_candidate.means["ndcg@10"] == c_champion.means["ndcg@10"] == 1.0
    # a reorder of the shown documents still counts
    worse = condensed(evaluate_rankings({"q": ["d2", "d3", "d1"]}, qrels), qrels, shown)
    assert worse.means["ndcg@10"] == 0.5
