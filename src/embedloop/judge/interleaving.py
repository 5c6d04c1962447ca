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
run can credit exactly the sessions of one comparison (a canary against the champion,
or a champion on watch against the one it replaced).

Which sessions: only sessions of evaluation-pool queries (pairs.in_eval_pool), which no
candidate ever trains on. A candidate judged on queries it trained on could win by
memorising their clicks, while what users gain from it is on queries it has not seen.

Pure: no I/O. The service mixes the lists; the next run credits the logged clicks.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from embedloop.learn.pairs import in_eval_pool, normalize_query

CHAMPION, CANDIDATE = "champion", "candidate"


def in_canary(session: str, share: float) -> bool:
    """Whether `session` falls in `share` of sessions: a stable hash of the session id
    (the same answer in every process and on every retry)."""
    return share > 0 and zlib.crc32(session.encode("utf-8")) < share * 2 ** 32


def interleaved_session(session: str, query: str, share: float, pool_fraction: float) -> bool:
    """Whether a search gets an interleaved list: `share` of all sessions, drawn from the
    sessions of pool queries (a `pool_fraction` of queries), so the share of those
    sessions taken is share / pool_fraction, at most all of them."""
    if not session or share <= 0 or not in_eval_pool(normalize_query(query), pool_fraction):
        return False
    return in_canary(session, min(1.0, share / pool_fraction))


def pick_opponent(session: str, opponents: int) -> int:
    """Which of `opponents` rankers an interleaved session is matched against: a stable
    hash of the session, independent of the one that chose it for interleaving."""
    return zlib.crc32(f"{session}\x1eopponent".encode()) % max(1, opponents)


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
    uncounted: int = 0  # interleaved sessions left out: queries outside the pool

    @property
    def ties(self) -> int:
        return self.sessions - self.candidate_wins - self.champion_wins


def session_votes(clicks: Iterable[tuple[str, str | None, bool]], champion: str = CHAMPION,
                  candidate: str = CANDIDATE) -> dict[str, int]:
    """(session_id, team, clicked) per shown result -> each session's vote, in the order
    sessions first appear: +1 the candidate's results got more clicks, -1 the champion's,
    0 neither. Only sessions interleaved between exactly these two teams count: results
    without a team (sessions that were not interleaved), and sessions in which another
    team took part (another comparison), say nothing about this pair."""
    tallies: dict[str, list[int]] = {}
    foreign: set[str] = set()
    for session, team, clicked in clicks:
        if not isinstance(team, str) or not team:  # missing: None, or NaN from a frame
            continue
        if team not in (champion, candidate):
            foreign.add(session)
            continue
        tally = tallies.setdefault(session, [0, 0])
        tally[team == candidate] += int(bool(clicked))
    return {s: (t[1] > t[0]) - (t[0] > t[1]) for s, t in tallies.items() if s not in foreign}


def credit(clicks: Iterable[tuple[str, str | None, bool]], champion: str = CHAMPION,
           candidate: str = CANDIDATE,
           counted: Callable[[str], bool] | None = None) -> InterleavingEvidence:
    """The sessions' votes, added up. `counted(session)` (default: all) says which
    sessions count; the others are reported as `uncounted`."""
    votes = session_votes(clicks, champion, candidate)
    kept = [v for s, v in votes.items() if counted is None or counted(s)]
    return InterleavingEvidence(len(kept), kept.count(1), kept.count(-1),
                                len(votes) - len(kept))
