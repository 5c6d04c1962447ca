"""The canary's sequential test (sequential.py) on interleaved sessions of simulated
position-biased users: the shared simulator's own click model (examination 1/position,
0.9 on a relevant document, 0.06 on any other), team-draft lists as the service mixes
them, the evidence read after every session, as often as anyone could read it."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from embedloop.judge.evidence import Finding, OnlineRule, Source, read_interleaving
from embedloop.judge.interleaving import team_draft
from embedloop.judge.sequential import SequentialReading, boundary_curve, log_evidence, wins_needed
from tests.helpers import Clicks, shared_clicks


@pytest.fixture(scope="module")
def clicks_for() -> Clicks:
    return shared_clicks()


def queries(seed: int, n: int = 100) -> list[tuple[list[str], dict[str, int]]]:
    """(the champion's top 10, the relevant documents) per query: one or two relevant
    documents, mostly near the top, as a decent ranker places them."""
    rng = random.Random(seed)
    out = []
    for q in range(n):
        docs = [f"q{q}-d{i}" for i in range(30)]
        rng.shuffle(docs)
        relevant = {d: 1 for d in docs[: rng.choice((1, 1, 2))]}
        top = docs[len(relevant): len(relevant) + 10 - len(relevant)]
        for d in relevant:
            top.insert(min(int(rng.expovariate(0.5)), len(top)), d)
        out.append((top[:10], relevant))
    return out


def equally_good(top: list[str], relevant: dict[str, int], rng: random.Random) -> list[str]:
    """Another ranker exactly as good: the relevant documents where the champion has them,
    the rest shown in another order, some of them documents the champion did not show."""
    others = [d for d in top if d not in relevant] + [f"{top[0]}-other{i}" for i in range(3)]
    rng.shuffle(others)
    return [d if d in relevant else others.pop() for d in top]


def worse(top: list[str], relevant: dict[str, int]) -> list[str]:
    """The champion's list with each relevant document moved four places down."""
    out = [d for d in top if d not in relevant]
    for d in relevant:
        out.insert(min(top.index(d) + 4, len(out)), d)
    return out[:10]


def canary(pairs: list[tuple[list[str], list[str], dict[str, int]]], clicks_for: Clicks,
           rng: random.Random, rule: OnlineRule) -> tuple[Finding, int]:
    """Sessions until the test decides or the limit: (what it found, sessions)."""
    wins = losses = 0
    for session in range(1, rule.max_sessions + 1):
        champion, challenger, relevant = rng.choice(pairs)
        mixed = team_draft(champion, challenger, 10, rng, ("c", "x"))
        votes = {"c": 0, "x": 0}
        for (_, team), clicked in zip(mixed, clicks_for([d for d, _ in mixed], relevant,
                                                        False, rng), strict=True):
            if clicked and team is not None:
                votes[team] += 1
        if votes["x"] == votes["c"]:
            continue
        wins, losses = wins + (votes["x"] > votes["c"]), losses + (votes["c"] > votes["x"])
        verdict = read_interleaving(Source.CANARY, session, wins, losses, rule)
        if verdict.finding in (Finding.SUPERIOR, Finding.HARM):
            return verdict.finding, session
    return Finding.EXPIRED, rule.max_sessions


def test_a_a_an_equally_good_candidate_is_promoted_at_most_alpha(clicks_for: Clicks) -> None:
    """200 canaries of a candidate exactly as good as the champion, read after every
    session for up to 1,000: false promotions stay within alpha (the mixture SPRT's bound
    holds however often it is read)."""
    rng = random.Random(11)
    rule = OnlineRule(alpha=0.025, harm_alpha=0.05, max_sessions=1_000)
    pairs = [(top, equally_good(top, rel, rng), rel) for top, rel in queries(1)]
    found = [canary(pairs, clicks_for, random.Random(i), rule)[0] for i in range(200)]
    promoted, stopped = found.count(Finding.SUPERIOR), found.count(Finding.HARM)
    print(f"A/A: {promoted} promoted, {stopped} stopped of 200")
    assert promoted / 200 <= rule.alpha
    assert stopped / 200 <= rule.harm_alpha


def test_a_worse_candidate_is_stopped_and_never_promoted(clicks_for: Clicks) -> None:
    rule = OnlineRule(alpha=0.025, harm_alpha=0.05, max_sessions=5_000)
    pairs = [(top, worse(top, rel), rel) for top, rel in queries(2)]
    runs = [canary(pairs, clicks_for, random.Random(100 + i), rule) for i in range(40)]
    assert all(finding == Finding.HARM for finding, _ in runs)
    median = statistics.median(n for _, n in runs)
    print(f"a worse candidate is stopped after {median:.0f} sessions (median)")
    assert median < 1_000


def test_a_better_candidate_is_promoted(clicks_for: Clicks) -> None:
    """The mirror image: the champion is the worse list."""
    rule = OnlineRule(alpha=0.025, harm_alpha=0.05, max_sessions=5_000)
    pairs = [(worse(top, rel), top, rel) for top, rel in queries(3)]
    runs = [canary(pairs, clicks_for, random.Random(200 + i), rule) for i in range(40)]
    assert all(finding == Finding.SUPERIOR for finding, _ in runs)


def test_the_evidence_is_symmetric_and_grows_with_a_lead() -> None:
    assert log_evidence(0, 0) == pytest.approx(0.0)  # no data: a likelihood ratio of 1
    assert log_evidence(60, 40) > log_evidence(55, 45) > log_evidence(50, 50)
    assert log_evidence(40, 60) < 0  # evidence against
    reading = SequentialReading(70, 30, alpha=0.025, harm_alpha=0.05)
    assert reading.evidence == pytest.approx(log_evidence(70, 30))
    assert reading.harm_evidence == pytest.approx(log_evidence(30, 70))
    assert reading.better and not reading.worse
    assert SequentialReading(30, 70, 0.025, 0.05).worse


def test_wins_needed_is_the_boundary_itself() -> None:
    for decided in (20, 100, 400, 2000):
        needed = wins_needed(decided, 0.025)
        if needed is None:
            assert log_evidence(decided, 0) < math.log(40)
            continue
        assert log_evidence(needed, decided - needed) >= math.log(40)
        assert log_evidence(needed - 1, decided - needed + 1) < math.log(40)
    # the lead needed grows more slowly than the sessions: any share above 1/2 gets there
    curve = dict(boundary_curve(4000, 0.025))
    assert 0 < curve[4000] / 4000 < curve[200] / 200 < 1
    assert curve[200] == 2 * wins_needed(200, 0.025) - 200
