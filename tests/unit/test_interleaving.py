"""Team-draft interleaving and the credit of its clicks, on simulated users."""

from __future__ import annotations

import random

import pytest

from embedloop.judge.interleaving import (
    CANDIDATE,
    CHAMPION,
    credit,
    in_canary,
    interleaved_session,
    pick_opponent,
    session_votes,
    team_draft,
)
from embedloop.learn.pairs import in_eval_pool, normalize_query

DOCS = [f"d{i}" for i in range(20)]


def test_a_mixed_list_holds_each_teams_best_without_repeats() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.sample(DOCS, 10), rng.sample(DOCS, 10)
        mixed = team_draft(a, b, 10, rng)
        docs = [d for d, _ in mixed]
        assert len(docs) == len(set(docs)) == 10
        teams = [t for _, t in mixed]
        assert abs(teams.count(CHAMPION) - teams.count(CANDIDATE)) <= 1
        # each team's picks come in its own ranking's order
        for team, ranking in ((CHAMPION, a), (CANDIDATE, b)):
            picked = [d for d, t in mixed if t == team]
            assert picked == sorted(picked, key=ranking.index)
        assert a[0] in docs and b[0] in docs


def test_identical_rankings_are_shown_as_they_are_and_credit_no_one() -> None:
    mixed = team_draft(DOCS[:10], DOCS[:10], 10, random.Random(1))
    assert mixed == [(d, None) for d in DOCS[:10]]


def test_what_both_would_place_next_is_shared() -> None:
    """Agreement at the top is shared; the draft starts where the rankings differ."""
    champion = ["a", "b", "c", "x", "y"]
    candidate = ["a", "b", "d", "c", "z"]
    for seed in range(20):
        mixed = team_draft(champion, candidate, 5, random.Random(seed))
        assert mixed[:2] == [("a", None), ("b", None)]
        assert mixed[2] in (("c", CHAMPION), ("d", CANDIDATE))  # a coin decides


def test_short_rankings_fill_from_the_other_team() -> None:
    mixed = team_draft(["x"], DOCS[:5], 4, random.Random(2))
    assert len(mixed) == 4 and ("x", CHAMPION) in mixed


def test_credit_counts_interleaved_sessions_only() -> None:
    rows = [("s1", CANDIDATE, True), ("s1", CHAMPION, False), ("s2", CANDIDATE, True),
            ("s3", CHAMPION, True), ("s3", CANDIDATE, True), ("s4", None, True),
            ("s5", CANDIDATE, True)]
    evidence = credit(rows)
    assert (evidence.sessions, evidence.candidate_wins, evidence.champion_wins,
            evidence.ties) == (4, 3, 0, 1)
    assert session_votes(rows) == {"s1": 1, "s2": 1, "s3": 0, "s5": 1}  # first seen first
    # only the sessions that count (pool queries): the others are reported apart
    kept = credit(rows, counted={"s1", "s3"}.__contains__)
    assert (kept.sessions, kept.candidate_wins, kept.ties, kept.uncounted) == (2, 1, 1, 2)


def test_teams_can_be_model_versions_and_only_that_pairs_sessions_count() -> None:
    mixed = team_draft(DOCS[:10], DOCS[10:], 10, random.Random(5), teams=("3", "7"))
    assert {t for _, t in mixed} == {"3", "7"}
    rows = [("s1", "7", True), ("s1", "3", False),  # this canary: the candidate wins
            ("s2", "3", True), ("s2", "7", False),  # the champion wins
            ("s3", "3", False), ("s3", "5", True),  # an earlier canary (v5): not counted
            ("s4", float("nan"), True)]  # not interleaved (a missing value in a frame)
    evidence = credit(rows, champion="3", candidate="7")
    assert (evidence.sessions, evidence.candidate_wins, evidence.champion_wins) == (2, 1, 1)


def test_canary_sessions_are_a_stable_share() -> None:
    sessions = [f"session-{i}" for i in range(20_000)]
    for share in (0.0, 0.1, 0.5, 1.0):
        chosen = [s for s in sessions if in_canary(s, share)]
        assert len(chosen) == pytest.approx(share * len(sessions), abs=400)
        assert chosen == [s for s in sessions if in_canary(s, share)]  # same every time
    # a larger share keeps the sessions of a smaller one (raising it adds sessions)
    assert set(filter(lambda s: in_canary(s, 0.1), sessions)) <= \
        set(filter(lambda s: in_canary(s, 0.5), sessions))


def test_only_sessions_of_pool_queries_are_interleaved() -> None:
    """The queries no candidate trains on: a canary cannot win by memorising its training
    clicks. canary_share is a share of all sessions, so share / pool of the pool's."""
    queries = [f"query number {i}" for i in range(2_000)]
    pool = [q for q in queries if in_eval_pool(normalize_query(q), 0.2)]
    chosen = [q for i, q in enumerate(queries) if interleaved_session(f"s{i}", q, 0.1, 0.2)]
    assert set(chosen) <= set(pool)
    assert len(chosen) == pytest.approx(0.1 * len(queries), abs=60)  # half the pool's
    everyone = [q for i, q in enumerate(queries) if interleaved_session(f"s{i}", q, 0.25, 0.2)]
    assert everyone == pool  # a share above the pool's takes all of its sessions
    assert not interleaved_session("", pool[0], 1.0, 0.2)  # no session id: nothing to credit
    assert not interleaved_session("s1", pool[0], 0.0, 0.2)


def test_a_session_meets_one_opponent_always_the_same() -> None:
    picks = [pick_opponent(f"s{i}", 2) for i in range(10_000)]
    assert picks.count(0) == pytest.approx(5_000, abs=200)
    assert picks == [pick_opponent(f"s{i}", 2) for i in range(10_000)]
    assert {pick_opponent(f"s{i}", 1) for i in range(100)} == {0}
