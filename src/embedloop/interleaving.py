"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): compare two rankers on
the same sessions, shown the same way, by which one's results users click.

Each session sees one list mixed from both rankings: rounds of picks, the team with
fewer picks so far (a coin when tied) adding its best document not shown yet, each
result labelled with the team that placed it (a document both would place next is
shared, labelled with neither). A session's clicks then vote: the team whose results
got more clicks wins it; a tie (or no click, or clicks on shared results only) says
nothing. Position bias hits both teams alike, since each is as likely to hold any
position.

In production the two teams are model versions: the service labels each result of an
interleaved list with the version that placed it (the log's `team` field), so the next
run can credit exactly the sessions of one champion-against-candidate canary.

Pure: no I/O. The service mixes the lists; the next run credits the logged clicks.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CHAMPION, CANDIDATE = "champion", "candidate"


def in_canary(session: str, share: float) -> bool:
    """Whether `session` gets an interleaved list: a stable hash of the session id (the
    same answer in every process and on every retry), below `share` for that share of
    sessions."""
    return share > 0 and zlib.crc32(session.encode("utf-8")) < share * 2 ** 32


def session_rng(session: str, query: str) -> random.Random:
    """The coin flips of one session's draft: the same list when a session asks again."""
    return random.Random(zlib.crc32(f"{session}\x1f{query}".encode()))


def team_draft(champion: Sequence[str], candidate: Sequence[str], k: int,
               rng: random.Random, teams: tuple[str, str] = (CHAMPION, CANDIDATE),
               ) -> list[tuple[str, str | None]]:
    """Up to k (doc_id, team) pairs mixed from the two rankings, best first; `teams`
    labels the champion's picks and the candidate's.

    A document that both teams would pick next is shown with no team (None): either
    ranker would have put it there, so a click on it says nothing about which is
    better. Crediting it to whichever team happened to draft it (plain team-draft)
    adds a coin-flip vote to every session whose click lands on it; when two rankers
    mostly agree at the top that noise drowns the sessions where they differ."""
    first, second = teams
    shown: set[str] = set()
    out: list[tuple[str, str | None]] = []
    picks = {first: 0, second: 0}
    rankings = {first: list(champion), second: list(candidate)}
    cursor = {first: 0, second: 0}

    def next_unshown(team: str) -> str | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in shown:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(out) < k:
        both = next_unshown(first)
        if both is not None and both == next_unshown(second):
            shown.add(both)
            out.append((both, None))
            continue
        if picks[first] != picks[second]:
            order = sorted(picks, key=picks.__getitem__)  # the team behind picks first
        else:
            order = [first, second] if rng.random() < 0.5 else [second, first]
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


    @property
    def champion_p_value(self) -> float:
        """The same test the other way: is the champion preferred?"""
        return InterleavingEvidence(self.sessions, self.champion_wins,
                                    self.candidate_wins).p_value


def credit(clicks: Iterable[tuple[str, str | None, bool]], champion: str = CHAMPION,
           candidate: str = CANDIDATE) -> InterleavingEvidence:
    """(session_id, team, clicked) per shown result -> the sessions' votes. Only
    sessions interleaved between exactly these two teams count: results without a team
    (sessions that were not interleaved), and sessions in which another team took part
    (an earlier canary), say nothing about this pair."""
    votes: dict[str, dict[str, int]] = {}
    foreign: set[str] = set()
    for session, team, clicked in clicks:
        if not isinstance(team, str) or not team:  # missing: None, or NaN from a frame
            continue
        if team not in (champion, candidate):
            foreign.add(session)
            continue
        tally = votes.setdefault(session, {champion: 0, candidate: 0})
        tally[team] += int(bool(clicked))
    tallies = [t for s, t in votes.items() if s not in foreign]
    wins = sum(t[candidate] > t[champion] for t in tallies)
    losses = sum(t[champion] > t[candidate] for t in tallies)
    return InterleavingEvidence(len(tallies), wins, losses)
