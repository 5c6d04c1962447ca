"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): compare two rankers on
the same sessions, shown the same way, by which one's results users click.

Each session sees one list mixed from both rankings: rounds of picks, the team with
fewer picks so far (a coin when tied) adding its best document not shown yet, each
result labelled with the team that placed it. A session's clicks then vote: the team
whose results got more clicks wins it; a tie (or no click) says nothing. Position bias
hits both teams alike, since each is as likely to hold any position.

Pure: no I/O. The service mixes the lists; the next run credits the logged clicks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CHAMPION, CANDIDATE = "champion", "candidate"


def team_draft(champion: Sequence[str], candidate: Sequence[str], k: int,
               rng: random.Random) -> list[tuple[str, str]]:
    """Up to k (doc_id, team) pairs mixed from the two rankings, best first."""
    shown: set[str] = set()
    out: list[tuple[str, str]] = []
    picks = {CHAMPION: 0, CANDIDATE: 0}
    rankings = {CHAMPION: list(champion), CANDIDATE: list(candidate)}
    cursor = {CHAMPION: 0, CANDIDATE: 0}

    def next_unshown(team: str) -> str | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in shown:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(out) < k:
        if picks[CHAMPION] != picks[CANDIDATE]:
            order = sorted(picks, key=picks.__getitem__)  # the team behind picks first
        else:
            order = [CHAMPION, CANDIDATE] if rng.random() < 0.5 else [CANDIDATE, CHAMPION]
        for team in order:  # the team whose ranking is exhausted yields its turn
            doc = next_unshown(team)
            if doc is not None:
                break
        else:
            break  # both rankings exhausted
        shown.add(doc)
        picks[team] += 1
        out.append((doc, team))
    return out


@dataclass(frozen=True)
class InterleavingEvidence:
    sessions: int  # interleaved sessions seen
    candidate_wins: int
    champion_wins: int

    @property
    def ties(self) -> int:
        return self.sessions - self.candidate_wins - self.champion_wins

    @property
    def p_value(self) -> float:
        """One-sided sign test: the chance of at least this many candidate wins among the
        decided sessions if neither ranker were preferred."""
        n, wins = self.candidate_wins + self.champion_wins, self.candidate_wins
        if n == 0:
            return 1.0
        return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n


def credit(clicks: Iterable[tuple[str, str | None, bool]]) -> InterleavingEvidence:
    """(session_id, team, clicked) per shown result -> the sessions' votes. Results
    without a team (sessions that were not interleaved) are not counted."""
    votes: dict[str, dict[str, int]] = {}
    for session, team, clicked in clicks:
        if team not in (CHAMPION, CANDIDATE):
            continue
        tally = votes.setdefault(session, {CHAMPION: 0, CANDIDATE: 0})
        tally[team] += int(bool(clicked))
    candidate = sum(t[CANDIDATE] > t[CHAMPION] for t in votes.values())
    champion = sum(t[CHAMPION] > t[CANDIDATE] for t in votes.values())
    return InterleavingEvidence(len(votes), candidate, champion)
