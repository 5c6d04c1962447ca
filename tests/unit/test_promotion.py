from __future__ import annotations

import pandas as pd
import pytest

from embedloop.evaluation import METRICS, EvalReport
from embedloop.promotion import PromotionPolicy, should_promote


def report(scores: list[float]) -> EvalReport:
    rows = [{"query": f"q{i}", **{m: s for m in METRICS}} for i, s in enumerate(scores)]
    return EvalReport(per_query=pd.DataFrame(rows))


POLICY = PromotionPolicy(min_improvement=0.01, min_eval_queries=2)


@pytest.mark.parametrize("cand, inc, promote, words", [
    ([0.6, 0.6], [0.5, 0.5], True, "improved by +0.1000"),
    ([0.5, 0.5], [0.5, 0.5], False, "tied"),                       # a tie keeps the incumbent
    ([0.505, 0.505], [0.5, 0.5], False, "only +0.0050"),           # better, not enough
    ([0.51, 0.51], [0.5, 0.5], False, "only"),                     # exactly the minimum: keep
    ([0.4, 0.4], [0.5, 0.5], False, "worse than the incumbent by 0.1000"),
    ([0.9], [0.1], False, "only 1 held-out queries"),              # too few to judge
    ([0.9, 0.9], [0.1], False, "not scored on the same queries"),
])
def test_gate(cand: list[float], inc: list[float], promote: bool, words: str) -> None:
    decision = should_promote(report(cand), report(inc), POLICY)
    assert decision.promote is promote
    assert words in decision.reason


def test_decision_records_the_numbers_it_used() -> None:
    decision = should_promote(report([0.7, 0.5]), report([0.5, 0.5]), POLICY)
    assert decision.numbers == pytest.approx({"candidate": 0.6, "incumbent": 0.5, "delta": 0.1,
                                              "min_improvement": 0.01, "eval_queries": 2.0})
