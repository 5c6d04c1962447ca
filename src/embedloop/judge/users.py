"""Users' evidence in a run: the interleaved comparisons judged on all their sessions so
far, and a new candidate started as a canary.

The watch comes first: a champion that users credibly prefer less than the one it
replaced is rolled back, and the canaries judged against it end with it. Then each
canary: one that users credibly prefer is promoted (the commit point), one they
credibly like less, or one undecided at its session limit, ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd

from embedloop.index.base import VectorIndex
from embedloop.judge.evidence import Source, read_interleaving
from embedloop.judge.interleaving import credit, session_votes
from embedloop.judge.policy import (
    Action,
    Comparison,
    Judge,
    Judgement,
    Policy,
    UsersEvidence,
    on_track,
)
from embedloop.learn.pairs import in_eval_pool, normalize_query
from embedloop.production.champion import Production
from embedloop.report.log import Log


def interleaved_rows(frames: list[pd.DataFrame | None], pool_fraction: float,
                     ) -> tuple[list[tuple[str, str | None, bool]], dict[str, pd.Timestamp]]:
    """The shown results of interleaved sessions, as (session, team, clicked), and when
    each session of a pool query began (the sessions that can count)."""
    parts = [f[["session_id", "ts", "query", "team", "clicked"]] for f in frames
             if f is not None and "team" in f.columns]
    if not parts:
        return [], {}
    rows = pd.concat(parts, ignore_index=True)
    rows = rows[rows["team"].notna()]
    began = rows.assign(ts=pd.to_datetime(rows["ts"], utc=True)).groupby(
        "session_id", sort=False).agg(ts=("ts", "min"), query=("query", "first"))
    pool = {s: ts for s, ts, q in zip(began.index, began["ts"], began["query"], strict=True)
            if in_eval_pool(normalize_query(str(q)), pool_fraction)}
    return list(zip(rows["session_id"], rows["team"], rows["clicked"], strict=True)), pool


def counts_after(pool: dict[str, pd.Timestamp], after: str) -> Callable[[str], bool]:
    """Which sessions count for a comparison started once the logs up to `after` had
    been read: pool-query sessions that began later (all of them if `after` is empty)."""
    if not after:
        return pool.__contains__
    start = pd.Timestamp(after)
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    return lambda session: session in pool and pool[session] > start


def judge_users(production: Production, judge: Judge, champion: str,
                frames: list[pd.DataFrame | None], pool_fraction: float, after: str,
                log: Log | None = None) -> UsersEvidence:
    """The watch of `champion`, then its canaries, each on all its sessions so far (in
    `frames`: the history and this run's batch, whose logs end at `after`)."""
    log = log or logging.getLogger(__name__)
    rows, pool = interleaved_rows(frames, pool_fraction)
    comparisons: list[Comparison] = []

    def read(source: Source, challenger: str, opponent: str) -> Judgement:
        tags = production.registry.version_info(challenger).tags
        counted = counts_after(pool, tags.get(f"{source}_after", ""))
        tally = credit(rows, champion=opponent, candidate=challenger, counted=counted)
        verdict = read_interleaving(source, tally.sessions, tally.candidate_wins,
                                    tally.champion_wins, judge.policy.online_rule(source),
                                    tally.uncounted)
        judged = (judge.watch if source == Source.WATCH else judge.canary)(challenger, verdict)
        votes = [v for s, v in session_votes(rows, opponent, challenger).items()
                 if counted(s)]
        log.info("%s v%s against v%s: %s - %s", source, challenger, opponent,
                 judged.action, judged.reason)
        comparisons.append(Comparison(source, challenger, opponent, judged, votes))
        return judged

    rolled_back = None
    previous = production.registry.watched_against(champion)
    if previous is not None:
        watch = read(Source.WATCH, champion, previous)
        if watch.action == Action.ROLLBACK:
            rolled_back = production.rollback()  # ends the watch and its canaries
            champion = rolled_back.champion
        elif watch.action == Action.PASS:
            production.end_watch(champion, f"held: {watch.reason}")
    promoted = None
    for version in production.state().canaries:  # those judged against `champion`
        canary = read(Source.CANARY, version, champion)
        if canary.action == Action.PROMOTE:
            production.promote(version, after)  # the commit point; the other canaries end
            promoted = version
            break
        if canary.action == Action.STOP:
            production.end_canary(version, canary.reason)
    return UsersEvidence(comparisons, promoted, rolled_back)


def start_canary(production: Production, policy: Policy, users: UsersEvidence,
                 index: VectorIndex, version: str, corpus_fingerprint: str, slots: int,
                 share: float, after: str, log: Log | None = None) -> tuple[bool, str]:
    """A candidate the offline screen let through becomes a canary, with the index it
    was evaluated on. The queue: it takes a free slot (`slots`); when none is free, it
    replaces the running canary with the weakest evidence unless that one is on track
    (policy.on_track: users are warming to it, and at its win share so far it would
    decide soon). Returns whether it started, and why, in words."""
    log = log or logging.getLogger(__name__)
    running = list(production.state().canaries)
    if len(running) >= slots:
        readings = {v: users.reading(v) for v in running}

        def strength(v: str) -> float:
            reading = readings[v]
            return reading.evidence if reading else 0.0

        weakest = min(running, key=strength)
        reading = readings[weakest]
        if reading is not None and on_track(reading, policy.online_alpha):
            why = ("not started: the canary slot(s) hold candidates users are warming to ("
                   + ", ".join(f"v{v} evidence {strength(v):.2f}" for v in running)
                   + "); it waits for one to end")
            log.info("canary v%s %s", version, why)
            return False, why
        production.end_canary(weakest, f"replaced by v{version}: not on track (evidence "
                                       f"{strength(weakest):.2f}"
                                       + (f", {reading.wins}-{reading.losses} in "
                                          f"{reading.sessions} sessions)" if reading else ")"))
    production.ensure_saved(index, version, corpus_fingerprint)
    production.start_canary(version, slots, after=after)
    why = (f"interleaved with the champion in up to {share:.0%} of search sessions (those "
           f"of pool queries) until users' clicks decide (at most "
           f"{policy.canary_max_sessions} sessions)")
    log.info("canary v%s started: %s", version, why)
    return True, why
