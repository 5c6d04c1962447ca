from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedloop.evaluation import METRICS, EvalReport
from embedloop.interleaving import InterleavingEvidence
from embedloop.promotion import (
    PromotionPolicy,
    alpha_for_look,
    alpha_spent,
    judge_canary,
    sessions_needed,
    should_promote,
)
from embedloop.significance import bootstrap_ci, randomization_p_value


def report(scores: list[float]) -> EvalReport:
    rows = [{"query": f"q{i}", **{m: s for m in METRICS}} for i, s in enumerate(scores)]
    return EvalReport(per_query=pd.DataFrame(rows))


# alpha=1.0: significance off, to test the threshold rules on their own
THRESHOLD_ONLY = PromotionPolicy(min_improvement=0.01, min_eval_queries=2, alpha=1.0)


@pytest.mark.parametrize("cand, inc, promote, words", [
    ([0.6, 0.6], [0.5, 0.5], True, "improved by +0.1000"),
    ([0.5, 0.5], [0.5, 0.5], False, "tied"),                       # a tie keeps the incumbent
    ([0.505, 0.505], [0.5, 0.5], False, "only +0.0050"),           # better, not enough
    ([0.51, 0.51], [0.5, 0.5], False, "only"),                     # exactly the minimum: keep
    ([0.4, 0.4], [0.5, 0.5], False, "worse than the incumbent by 0.1000"),
    ([0.9], [0.1], False, "only 1 evaluation-pool queries"),       # too few to judge
    ([0.9, 0.9], [0.1], False, "not scored on the same queries"),
])
def test_threshold_rules(cand: list[float], inc: list[float], promote: bool,
                         words: str) -> None:
    decision = should_promote(report(cand), report(inc), THRESHOLD_ONLY)
    assert decision.promote is promote
    assert words in decision.reason


@pytest.mark.parametrize("deltas, expected", [
    # all 2^n sign patterns, counted by hand: share with mean >= the observed mean
    ([1.0, 1.0, 1.0], 1 / 8),               # only +++ reaches 1
    ([0.1, 0.2, -0.05], 2 / 8),             # sums 0.35 (+++) and 0.25 (++-) reach 0.25
    ([0.3, -0.3], 3 / 4),                   # observed 0: ++, +- and -+ have mean >= 0
    ([0.0, 0.0], 1.0),                      # no difference at all
    ([], 1.0),
])
def test_randomization_p_value_by_hand(deltas: list[float], expected: float) -> None:
    assert randomization_p_value(np.array(deltas)) == pytest.approx(expected)


def test_randomization_monte_carlo_agrees_with_exact_at_the_boundary() -> None:
    rng = np.random.default_rng(1)
    deltas = rng.normal(0.02, 0.1, size=16)
    exact = randomization_p_value(deltas)
    sampled = randomization_p_value(np.concatenate([deltas, [0.0]]))  # 17: Monte Carlo
    assert sampled == pytest.approx(exact, abs=0.02)  # a zero delta changes nothing


def test_bootstrap_ci() -> None:
    assert bootstrap_ci(np.full(10, 0.05)) == pytest.approx((0.05, 0.05))  # no spread
    low, high = bootstrap_ci(np.array([0.0, 0.1] * 50))
    assert low < 0.05 < high and high - low < 0.04  # around the mean, shrinking with n
    assert bootstrap_ci(np.array([0.0, 0.1] * 50)) == (low, high)  # seeded: reproducible


def test_gain_that_is_not_credible_keeps_the_incumbent() -> None:
    # mean +0.05, but one query carries it all: p = 4/8 with n=3 (exact)
    decision = should_promote(report([0.65, 0.5, 0.5]), report([0.5, 0.5, 0.5]),
                              PromotionPolicy(min_improvement=0.01, min_eval_queries=2))
    assert not decision.promote
    assert "not credibly" in decision.reason
    assert decision.numbers["p_value"] == pytest.approx(4 / 8)


def test_credible_gain_is_promoted_and_records_every_number() -> None:
    cand = report([0.6] * 8)
    inc = report([0.5] * 8)
    decision = should_promote(cand, inc, PromotionPolicy(min_improvement=0.01,
                                                         min_eval_queries=2))
    assert decision.promote
    assert decision.numbers["p_value"] == pytest.approx(1 / 256)
    assert decision.numbers == pytest.approx({
        "candidate": 0.6, "incumbent": 0.5, "delta": 0.1, "min_improvement": 0.01,
        "eval_queries": 8.0, "p_value": 1 / 256, "ci_low": 0.1, "ci_high": 0.1,
        "alpha": 0.05, "queries_better": 8.0, "queries_worse": 0.0,
        "look": 1.0, "alpha_look": 0.025, "alpha_spent": 0.025})


@pytest.mark.parametrize("guard_cand, promote", [(0.48, True), (0.45, False)])
def test_guard_set_regression_blocks_promotion(guard_cand: float, promote: bool) -> None:
    policy = PromotionPolicy(min_improvement=0.01, min_eval_queries=2, guard_tolerance=0.03)
    guard = (report([guard_cand] * 4), report([0.5] * 4))
    decision = should_promote(report([0.6] * 8), report([0.5] * 8), policy, guard=guard)
    assert decision.promote is promote
    assert decision.numbers["guard_delta"] == pytest.approx(guard_cand - 0.5)
    if not promote:
        assert "regressed by 0.0500 on the 4 guard queries" in decision.reason


def test_guard_scores_are_recorded_even_when_kept_for_another_reason() -> None:
    policy = PromotionPolicy(min_improvement=0.2, min_eval_queries=2)
    guard = (report([0.7] * 4), report([0.6] * 4))
    decision = should_promote(report([0.6] * 8), report([0.5] * 8), policy, guard=guard)
    assert not decision.promote and "not more than the required 0.2000" in decision.reason
    assert decision.numbers["guard_candidate"] == pytest.approx(0.7)
    assert decision.numbers["guard_incumbent"] == pytest.approx(0.6)


def test_alpha_spent_over_all_looks_never_exceeds_alpha() -> None:
    shares = [alpha_for_look(0.05, k) for k in range(1, 10_001)]
    assert shares[:3] == pytest.approx([0.025, 0.05 / 6, 0.05 / 12])
    assert sum(shares) == pytest.approx(alpha_spent(0.05, 10_000)) and sum(shares) < 0.05
    with pytest.raises(ValueError):
        alpha_for_look(0.05, 0)


def test_the_same_evidence_is_enough_at_the_first_look_but_not_at_a_later_one() -> None:
    rng = np.random.default_rng(3)
    gains = rng.normal(0.035, 0.16, size=150)  # p about 0.005 on 150 queries
    base = rng.uniform(0.3, 0.7, size=150)
    cand, inc = report(list(np.clip(base + gains, 0, 1))), report(list(base))
    policy = PromotionPolicy(min_improvement=0.005, alpha=0.05)
    first = should_promote(cand, inc, policy, look=1)
    later = should_promote(cand, inc, policy, look=6)  # may spend 0.05/42 = 0.0012
    assert first.numbers["p_value"] == pytest.approx(later.numbers["p_value"], abs=1e-3)
    assert 0.0012 < first.numbers["p_value"] < 0.025
    assert first.promote and "look 1" in first.reason
    assert not later.promote and "not credibly yet" in later.reason and "look 6" in later.reason
    assert later.numbers["alpha_spent"] == pytest.approx(0.05 * 6 / 7)
    # what is missing, in queries: z grows with sqrt(n), look 7 may spend 0.05/56
    assert 150 < later.numbers["queries_needed"] < 600
    assert f"about {int(later.numbers['queries_needed'])} pool queries" in later.reason


def test_repeated_looks_under_no_gain_promote_at_most_alpha() -> None:
    """A null candidate re-judged night after night on a growing pool (its per-query
    deltas have mean zero): the spending rule promotes at most alpha of such histories;
    testing every look at alpha (naive) promotes far more often."""
    rng = np.random.default_rng(7)
    policy = PromotionPolicy(min_improvement=0.0, alpha=0.2)  # a large alpha: few runs
    spent = naive = 0
    runs, looks = 150, 5
    for _ in range(runs):
        deltas = rng.choice([-0.2, -0.1, 0.0, 0.0, 0.0, 0.1, 0.2], size=20 * looks)
        promoted_spent = promoted_naive = False
        for k in range(1, looks + 1):
            n = 20 * k  # the pool grows
            inc = report([0.5] * n)
            cand = report(list(0.5 + deltas[:n]))
            promoted_spent |= should_promote(cand, inc, policy, look=k).promote
            promoted_naive |= should_promote(cand, inc, policy, look=1).promote
        spent += promoted_spent
        naive += promoted_naive
    print(f"false promotions: spending {spent}/{runs}, naive {naive}/{runs}")
    assert spent / runs <= 0.2
    assert naive / runs > 0.2  # the inflation the spending rule prevents


@pytest.mark.parametrize("guard, waiting", [
    (None, True),
    ((report([0.5] * 4), report([0.5] * 4)), True),  # held the guard set
    ((report([0.4] * 4), report([0.5] * 4)), False),  # lost on it: never canaried
])
def test_only_a_gain_short_of_evidence_that_held_the_guard_set_waits(
        guard: tuple[EvalReport, EvalReport] | None, waiting: bool) -> None:
    policy = PromotionPolicy(min_improvement=0.01, min_eval_queries=2)
    decision = should_promote(report([0.65, 0.5, 0.5]), report([0.5, 0.5, 0.5]), policy,
                              guard=guard)
    assert not decision.promote and "not credibly" in decision.reason
    assert decision.waiting is waiting


def test_kept_for_any_other_reason_does_not_wait() -> None:
    policy = PromotionPolicy(min_improvement=0.01, min_eval_queries=2)
    for cand in ([0.5] * 8, [0.4] * 8, [0.505] * 8):  # tied, worse, too small a gain
        assert not should_promote(report(cand), report([0.5] * 8), policy).waiting
    assert not should_promote(report([0.6] * 8), report([0.5] * 8), policy).waiting  # promoted


CANARY = PromotionPolicy(alpha=0.05)


def test_a_canary_that_wins_credibly_is_promoted_at_this_looks_alpha() -> None:
    evidence = InterleavingEvidence(sessions=400, candidate_wins=70, champion_wins=40)
    p = evidence.p_value
    assert 0.0025 < p < 0.025  # credible at look 1, not at look 4 (alpha/20)
    first = judge_canary(evidence, CANARY, look=1, max_sessions=10_000)
    assert first.action == "promote" and "won the interleaved canary" in first.reason
    later = judge_canary(evidence, CANARY, look=4, max_sessions=10_000)
    assert later.action == "continue" and later.numbers["sessions_needed"] > 400


def test_a_canary_the_users_prefer_less_is_stopped() -> None:
    evidence = InterleavingEvidence(sessions=300, candidate_wins=30, champion_wins=60)
    verdict = judge_canary(evidence, CANARY, look=1, max_sessions=10_000)
    assert verdict.action == "stop" and "lost the interleaved canary" in verdict.reason


def test_an_undecided_canary_continues_then_ends_at_its_session_limit() -> None:
    evidence = InterleavingEvidence(sessions=500, candidate_wins=51, champion_wins=49)
    assert judge_canary(evidence, CANARY, 1, max_sessions=10_000).action == "continue"
    ended = judge_canary(evidence, CANARY, 1, max_sessions=500)
    assert ended.action == "stop" and "no decision" in ended.reason


def test_sessions_needed_is_what_makes_the_sign_test_credible() -> None:
    """Grow the evidence at the same win share to the estimate: it is then credible."""
    evidence = InterleavingEvidence(sessions=200, candidate_wins=36, champion_wins=24)
    needed = sessions_needed(evidence, 0.025)
    assert needed > 200
    scale = needed / 200 * 1.1
    grown = InterleavingEvidence(round(200 * scale), round(36 * scale), round(24 * scale))
    assert grown.p_value < 0.025
    assert sessions_needed(InterleavingEvidence(100, 10, 12), 0.025) == 0  # not ahead
