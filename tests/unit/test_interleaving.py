"""Team-draft interleaving and the credit of its clicks, on simulated users."""

from __future__ import annotations

import random

import pytest

from embedloop.interleaving import CANDIDATE, CHAMPION, credit, in_canary, team_draft

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


def user_clicks(mixed: list[tuple[str, str | None]], relevant: set[str], rng: random.Random,
                session: str) -> list[tuple[str, str | None, bool]]:
    """A position-biased user: looks at rank r with probability 1/r, clicks what is
    relevant among what it looked at, and now and then something that is not."""
    return [(session, team, rng.random() < 1 / (r + 1)
             and (doc in relevant or rng.random() < 0.05))
            for r, (doc, team) in enumerate(mixed)]


def test_equally_good_rankers_are_not_told_apart_more_than_alpha() -> None:
    """A/A: both teams rank the relevant document at the same place, the others
    differently. Over 300 repeated trials of 300 sessions, p < 0.05 comes out at most
    about 5% of the time."""
    rng = random.Random(3)
    false_alarms = 0
    for _ in range(300):
        rows = []
        for s in range(300):
            ranking = rng.sample(DOCS, 10)
            relevant = rng.randrange(3)
            others = [d for i, d in enumerate(ranking) if i != relevant]
            rng.shuffle(others)  # the same relevant document at the same rank, the rest not
            other = [*others[:relevant], ranking[relevant], *others[relevant:]]
            mixed = team_draft(ranking, other, 10, rng)
            rows += user_clicks(mixed, {ranking[relevant]}, rng, f"s{s}")
        false_alarms += credit(rows).p_value < 0.05
    assert false_alarms / 300 <= 0.08


def test_a_better_candidate_wins_with_few_sessions() -> None:
    """The candidate ranks the relevant document first, the champion fifth."""
    rng = random.Random(4)
    rows = []
    for s in range(100):
        relevant = rng.choice(DOCS)
        others = [d for d in DOCS if d != relevant]
        rng.shuffle(others)
        champion = [*others[:4], relevant, *others[4:9]]
        candidate = [relevant, *others[9:18]]
        rows += user_clicks(team_draft(champion, candidate, 10, rng), {relevant}, rng, f"s{s}")
    evidence = credit(rows)
    assert evidence.candidate_wins > 2 * evidence.champion_wins
    assert evidence.p_value < 0.001


def test_credit_counts_interleaved_sessions_only() -> None:
    rows = [("s1", CANDIDATE, True), ("s1", CHAMPION, False), ("s2", CANDIDATE, True),
            ("s3", CHAMPION, True), ("s3", CANDIDATE, True), ("s4", None, True),
            ("s5", CANDIDATE, True)]
    evidence = credit(rows)
    assert (evidence.sessions, evidence.candidate_wins, evidence.champion_wins,
            evidence.ties) == (4, 3, 0, 1)
    assert evidence.p_value == pytest.approx(1 / 8)  # 3 of 3 decided sessions


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
