"""The interleaved canary's side of a run (promotion.py, "Canaries"): judge the running
canary by the clicks of its sessions, and start one for a candidate waiting for evidence.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import corpus_fingerprint
from embedloop.index import VectorIndex
from embedloop.interleaving import InterleavingEvidence, credit
from embedloop.ledger import record_look
from embedloop.production import Champion, Production
from embedloop.promotion import CanaryVerdict, Decision, judge_canary
from tasks._stage import stage
from tasks.evaluate import promotion_policy


@stage(name="judge canary")
def judge_canary_stage(settings: Settings, production: Production, champion: Champion,
                       batch: pd.DataFrame, history: pd.DataFrame | None,
                       ) -> CanaryVerdict | None:
    """The canary interleaved with this champion, judged on all its sessions so far (the
    committed batches and this one). A judgement is a look at the champion, so it is
    made only when this batch brought new sessions and there are enough of them."""
    pair = production.canary_pair(champion.version)
    if pair is None:
        return None
    version = pair[0]

    def evidence(frames: list[pd.DataFrame | None]) -> InterleavingEvidence:
        rows = [f[["session_id", "team", "clicked"]] for f in frames
                if f is not None and "team" in f.columns]
        both = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
            columns=["session_id", "team", "clicked"])
        return credit(zip(both["session_id"], both["team"], both["clicked"], strict=True),
                      champion=champion.version, candidate=version)

    so_far, fresh = evidence([history, batch]), evidence([batch])
    if fresh.sessions == 0 or so_far.sessions < settings.canary_min_sessions:
        verdict = CanaryVerdict(
            "continue", f"{so_far.sessions} interleaved sessions so far ({fresh.sessions} "
                        f"in this batch); judged from {settings.canary_min_sessions} with "
                        f"new ones", {"sessions": float(so_far.sessions)}, version)
    else:
        look = record_look(settings.state_dir, champion.version)  # before acting on it
        verdict = dataclasses.replace(
            judge_canary(so_far, promotion_policy(settings), look,
                         settings.canary_max_sessions), version=version)
    if verdict.action == "stop":
        production.end_canary(verdict.reason)
    get_run_logger().info("canary v%s: %s - %s", version, verdict.action, verdict.reason)
    return verdict


@stage(name="promote canary")
def promote_canary_stage(production: Production, version: str) -> str:
    """The commit point for a canary that won: its index was saved when it started, so
    promotion only moves the alias and the live pointer. Returns the live index."""
    production.promote(version)
    live = production.store.live_version()
    assert live is not None
    return live


@stage(name="start canary")
def start_canary_stage(settings: Settings, production: Production, decision: Decision,
                       running: CanaryVerdict | None, index: VectorIndex, version: str,
                       corpus: pd.DataFrame) -> CanaryVerdict | None:
    """A kept candidate that is waiting for evidence becomes the canary, with the index
    it was evaluated on, unless a canary is still being judged. Never one that failed
    the guard set or did not improve (`decision.waiting` is false for those)."""
    if settings.canary_share <= 0 or not decision.waiting:
        return None
    if running is not None and running.action == "continue":
        return None
    production.ensure_saved(index, version, corpus_fingerprint(corpus))
    production.start_canary(version)
    why = (f"interleaved with the champion for {settings.canary_share:.0%} of search "
           f"sessions until its clicks decide (from {settings.canary_min_sessions} "
           f"sessions; at most {settings.canary_max_sessions})")
    get_run_logger().info("canary v%s started: %s", version, why)
    return CanaryVerdict("started", why, {}, version)
