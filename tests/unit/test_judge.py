"""The evidence contract (evidence.py) and the judge (judge/policy.py): what each source can
say, what the judge does with it, the error budget, and the record it keeps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from embedloop.ingest.ledger import EvidenceLedger
from embedloop.judge.evaluation import METRICS, EvalReport
from embedloop.judge.evidence import (
    Finding,
    InterleavedComparison,
    OfflineComparison,
    OfflineRule,
    OnlineRule,
    SanityCheck,
    Source,
    Verdict,
    check_sanity,
    compare_offline,
    read_interleaving,
)
from embedloop.judge.policy import Action, Judge, Policy, on_track
from embedloop.judge.significance import bootstrap_ci, randomization_p_value


def report(scores: list[float]) -> EvalReport:
    rows = [{"query": f"q{i}", **{m: s for m in METRICS}} for i, s in enumerate(scores)]
    return EvalReport(per_query=pd.DataFrame(rows))


def pair(cand: list[float], inc: list[float]) -> tuple[EvalReport, EvalReport]:
    return report(cand), report(inc)


# significance off: the threshold rules on their own
THRESHOLD_ONLY = OfflineRule(min_improvement=0.01, min_queries=2, alpha=1.0)


@pytest.mark.parametrize("cand, inc, finding, words", [
    ([0.6, 0.6], [0.5, 0.5], Finding.SUPERIOR, "more than the required 0.01"),
    ([0.5, 0.5], [0.5, 0.5], Finding.NO_HARM, "tied"),           # a tie keeps the incumbent
    ([0.505, 0.505], [0.5, 0.5], Finding.NO_HARM, "only +0.0050"),  # better, not enough
    ([0.51, 0.51], [0.5, 0.5], Finding.NO_HARM, "only"),         # exactly the minimum: keep
    ([0.49, 0.49], [0.5, 0.5], Finding.NO_HARM, "worse by 0.0100"),  # within the margin
    ([0.9], [0.1], Finding.TOO_LITTLE, "only 1 queries"),
    ([0.9, 0.9], [0.1], Finding.TOO_LITTLE, "not scored on the same queries"),
])
def test_offline_threshold_rules(cand: list[float], inc: list[float], finding: Finding,
                                 words: str) -> None:
    full = pair(cand, inc)
    verdict = compare_offline(Source.POOL, full, full, THRESHOLD_ONLY)
    assert verdict.finding == finding
    assert words in verdict.reason


def test_a_credible_gain_is_superior_and_records_every_number() -> None:
    full = pair([0.6] * 8, [0.5] * 8)
    verdict = compare_offline(Source.POOL, full, full, OfflineRule(min_queries=2))
    assert verdict.finding == Finding.SUPERIOR
    assert isinstance(verdict.numbers, OfflineComparison)
    n = verdict.numbers
    assert (n.queries, n.candidate, n.incumbent, n.queries_better) == (8, 0.6, 0.5, 8)
    assert n.p_better == pytest.approx(1 / 256) and n.alpha == 0.025
    assert n.delta == pytest.approx(0.1) and n.condensed_delta == pytest.approx(0.1)


def test_a_gain_short_of_evidence_says_how_many_queries_it_needs() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.7, size=60)
    cand = list(np.clip(base + rng.normal(0.02, 0.16, size=60), 0, 1))
    full = pair(cand, list(base))
    verdict = compare_offline(Source.POOL, full, full, OfflineRule())
    assert verdict.finding == Finding.NO_HARM and "not credibly" in verdict.reason
    assert "queries would make a gain this size credible" in verdict.reason


def test_harm_is_read_over_the_documents_users_were_shown() -> None:
    """The on-policy case: over whole rankings the candidate looks worse (it lifts
    documents nobody was shown, which count as irrelevant), over the shown documents it
    is no worse: no harm. A loss over the shown documents beyond the margin is harm."""
    rule = OfflineRule(min_queries=2, harm_margin=0.01)
    whole = pair([0.45] * 30, [0.5] * 30)
    verdict = compare_offline(Source.POOL, whole, pair([0.52] * 30, [0.5] * 30), rule)
    assert verdict.finding == Finding.NO_HARM
    harmed = compare_offline(Source.POOL, whole, pair([0.45] * 30, [0.5] * 30), rule)
    assert harmed.finding == Finding.HARM and "credibly worse" in harmed.reason
    assert isinstance(harmed.numbers, OfflineComparison)
    assert harmed.numbers.harm_bound < -0.01
    # a loss within the margin is not harm, however sure
    within = compare_offline(Source.GUARD, whole, pair([0.495] * 30, [0.5] * 30), rule)
    assert within.finding == Finding.NO_HARM


def test_a_candidate_that_ranks_as_the_incumbent_does_is_the_same() -> None:
    def ranked(scores: list[float], top: list[str]) -> EvalReport:
        base = report(scores)
        return EvalReport(base.per_query, rankings={q: top for q in base.per_query["query"]})

    same = (ranked([0.5] * 5, ["a", "b"]), ranked([0.5] * 5, ["a", "b"]))
    assert compare_offline(Source.POOL, same, same, OfflineRule()).finding == Finding.SAME
    other = (ranked([0.5] * 5, ["b", "a"]), ranked([0.5] * 5, ["a", "b"]))
    verdict = compare_offline(Source.POOL, other, other, OfflineRule())
    assert verdict.finding == Finding.NO_HARM
    assert isinstance(verdict.numbers, OfflineComparison)
    assert verdict.numbers.queries_reordered == 5


def test_a_broken_candidate_is_found() -> None:
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(50, 16))
    assert check_sanity(healthy + 0.1, healthy).finding == Finding.NO_HARM
    nan = healthy.copy()
    nan[3, 2] = np.nan
    assert check_sanity(nan, healthy).finding == Finding.BROKEN
    collapsed = np.ones((50, 16)) + rng.normal(scale=1e-3, size=(50, 16))
    verdict = check_sanity(collapsed, healthy)
    assert verdict.finding == Finding.BROKEN and "nearly the same vector" in verdict.reason


class Record:
    """The judge's record in memory (the real one is ledger.EvidenceLedger)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, candidate: str, source: str, entry: dict[str, Any]) -> int:
        self.entries.append((candidate, source, entry))
        return sum(1 for c, s, _ in self.entries if (c, s) == (candidate, source))


def verdict(source: Source, finding: Finding) -> Verdict:
    return Verdict(source, finding, f"{source}: {finding}")


@pytest.mark.parametrize("findings, canary, action", [
    ({Source.POOL: Finding.SUPERIOR}, True, Action.PROMOTE),
    ({Source.POOL: Finding.NO_HARM}, True, Action.CANARY),
    ({Source.POOL: Finding.TOO_LITTLE}, True, Action.CANARY),  # the canary still screens
    ({Source.POOL: Finding.NO_HARM}, False, Action.KEEP),  # nothing to let users decide
    ({Source.POOL: Finding.SAME}, True, Action.KEEP),  # nothing users could tell apart
    ({Source.POOL: Finding.SUPERIOR, Source.GUARD: Finding.HARM}, True, Action.REJECT),
    ({Source.POOL: Finding.SUPERIOR, Source.SANITY: Finding.BROKEN}, True, Action.REJECT),
    ({Source.POOL: Finding.HARM}, True, Action.REJECT),
    ({Source.POOL: Finding.NO_HARM, Source.JUDGED: Finding.HARM}, True, Action.REJECT),
    # a better guard set or judged set never promotes on its own: only the pool does
    ({Source.POOL: Finding.NO_HARM, Source.GUARD: Finding.SUPERIOR}, True, Action.CANARY),
])
def test_the_judge_decides_from_the_verdicts_alone(findings: dict[Source, Finding],
                                                   canary: bool, action: Action) -> None:
    record = Record()
    judgement = Judge(Policy(canary=canary), record).offline(
        "run-1", [verdict(s, f) for s, f in findings.items()])
    assert judgement.action == action
    assert record.entries[0][:2] == ("run-1", "offline")  # recorded before acting
    if action == Action.REJECT:
        assert "never shown to users" in judgement.reason


def test_a_guard_set_that_disagrees_sends_a_better_pool_score_to_the_users() -> None:
    """The noise batch of the SciFact protocol: its candidate read +0.044 on a pool whose
    labels the noise had thinned (p = 0.028), and -0.023 on the frozen guard set."""
    rule = OfflineRule(min_queries=2, alpha=1.0)
    pool = compare_offline(Source.POOL, pair([0.6] * 8, [0.5] * 8), pair([0.6] * 8, [0.5] * 8),
                           rule)
    worse_guard = pair([0.47] * 8, [0.5] * 8)
    guard = compare_offline(Source.GUARD, worse_guard, pair([0.5] * 8, [0.5] * 8), rule)
    assert (pool.finding, guard.finding) == (Finding.SUPERIOR, Finding.NO_HARM)
    judgement = Judge(Policy(harm_margin=0.01), Record()).offline("run", [pool, guard])
    assert judgement.action == Action.CANARY and "guard set disagrees" in judgement.reason
    alone = Judge(Policy(harm_margin=0.01), Record()).offline("run", [pool])
    assert alone.action == Action.PROMOTE


def test_the_error_budget_is_per_candidate_and_split_between_offline_and_users() -> None:
    with_canary, without = Policy(alpha=0.05, canary=True), Policy(alpha=0.05, canary=False)
    assert with_canary.offline_alpha + with_canary.online_alpha == pytest.approx(0.05)
    assert without.offline_alpha == pytest.approx(0.05)
    assert with_canary.offline_rule().alpha == with_canary.offline_alpha
    assert with_canary.online_rule(Source.CANARY).alpha == with_canary.online_alpha
    # the same budget for every candidate: nothing is spent by earlier ones
    judge = Judge(with_canary, Record())
    for n in range(5):
        judge.offline(f"run-{n}", [verdict(Source.POOL, Finding.NO_HARM)])
    assert judge.policy.offline_rule().alpha == 0.025
    assert Policy(alpha=1.0).offline_alpha == 1.0  # significance off


@pytest.mark.parametrize("wins, losses, sessions, limit, finding, action, watch_action", [
    (120, 40, 900, 20_000, Finding.SUPERIOR, Action.PROMOTE, Action.PASS),
    (40, 120, 900, 20_000, Finding.HARM, Action.STOP, Action.ROLLBACK),
    (52, 48, 900, 20_000, Finding.UNDECIDED, Action.CONTINUE, Action.CONTINUE),
    (52, 48, 900, 900, Finding.EXPIRED, Action.STOP, Action.PASS),
    (0, 0, 0, 20_000, Finding.TOO_LITTLE, Action.CONTINUE, Action.CONTINUE),
])
def test_online_verdicts_and_what_they_do(wins: int, losses: int, sessions: int, limit: int,
                                          finding: Finding, action: Action,
                                          watch_action: Action) -> None:
    rule = OnlineRule(alpha=0.025, harm_alpha=0.05, max_sessions=limit)
    canary = read_interleaving(Source.CANARY, sessions, wins, losses, rule, uncounted=7)
    assert canary.finding == finding
    assert isinstance(canary.numbers, InterleavedComparison)
    assert canary.numbers.uncounted == 7 and canary.numbers.boundary == pytest.approx(
        math.log(40))
    record = Record()
    judge = Judge(Policy(), record)
    assert judge.canary("3", canary).action == action
    watch = read_interleaving(Source.WATCH, sessions, wins, losses, rule)
    assert judge.watch("4", watch).action == watch_action
    assert [(c, s) for c, s, _ in record.entries] == [("3", "canary"), ("4", "watch")]


@pytest.mark.parametrize("wins, losses, keeps", [
    (60, 30, True),     # a clear lead: it decides within a few times what it has had
    (197, 172, False),  # 53%: weeks of sessions still to go (the closed loop's day 11)
    (30, 32, False),    # its evidence does not favour it
    (0, 0, False),      # no sessions yet: nothing is lost by replacing it
])
def test_a_canary_keeps_its_slot_while_it_is_on_track(wins: int, losses: int,
                                                      keeps: bool) -> None:
    reading = read_interleaving(Source.CANARY, 3 * (wins + losses), wins, losses,
                                OnlineRule(alpha=0.025))
    assert isinstance(reading.numbers, InterleavedComparison)
    assert on_track(reading.numbers, 0.025) is keeps


def test_typed_numbers_are_written_and_read_back_under_the_same_keys() -> None:
    full = pair([0.6] * 8, [0.5] * 8)
    pool = compare_offline(Source.POOL, full, full, OfflineRule(min_queries=2))
    metrics = pool.metrics()
    assert metrics["pool.candidate"] == pytest.approx(0.6)
    assert metrics["pool.finding"] == Finding.SUPERIOR.code
    assert OfflineComparison.from_metrics(Source.POOL, metrics) == pool.numbers
    assert OfflineComparison.from_metrics(Source.GUARD, metrics) is None  # not written
    online = read_interleaving(Source.CANARY, 500, 80, 40, OnlineRule())
    assert InterleavedComparison.from_metrics("canary.v3", online.numbers.metrics(
        "canary.v3")) == online.numbers
    sanity = check_sanity(np.eye(4), np.eye(4))
    assert SanityCheck.from_metrics(Source.SANITY, sanity.metrics()) == sanity.numbers


def test_the_evidence_ledger_keeps_every_reading(tmp_path: Path) -> None:
    ledger = EvidenceLedger(tmp_path)
    assert ledger.latest("3", "canary") is None
    assert ledger.record("3", "canary", {"canary.evidence": 1.5}) == 1
    assert ledger.record("3", "canary", {"canary.evidence": 2.5}) == 2
    assert ledger.record("4", "canary", {"canary.evidence": 0.1}) == 1
    latest = ledger.latest("3", "canary")
    assert latest is not None and latest["canary.evidence"] == 2.5 and "at" in latest


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
