"""Users' evidence in a run: the watch and the canaries judged, and a new candidate
started as a canary (embedloop.judge.users)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.index.base import VectorIndex
from embedloop.ingest.batches import batch_end
from embedloop.ingest.corpus import corpus_fingerprint
from embedloop.ingest.ledger import EvidenceLedger
from embedloop.judge.policy import Action, Judge, Judgement, Policy, UsersEvidence
from embedloop.judge.users import judge_users, start_canary
from embedloop.production.champion import Production
from embedloop.tasks._stage import stage


@stage(name="judge users")
def judge_users_stage(production: Production, policy: Policy, state_dir: Path, champion: str,
                      batch: pd.DataFrame, history: pd.DataFrame | None,
                      pool_fraction: float) -> UsersEvidence:
    """The watch of `champion`, then its canaries, each on all its sessions so far."""
    return judge_users(production, Judge(policy, EvidenceLedger(state_dir)), champion,
                       [history, batch], pool_fraction, batch_end(batch), get_run_logger())


@stage(name="start canary")
def start_canary_stage(production: Production, policy: Policy, judgement: Judgement,
                       users: UsersEvidence, index: VectorIndex, version: str,
                       corpus: pd.DataFrame, batch: pd.DataFrame, slots: int,
                       share: float) -> tuple[bool, str]:
    """A candidate the offline screen sent to the users becomes a canary, if the queue
    lets it (embedloop.judge.users.start_canary). Returns whether it started, and why."""
    if judgement.action != Action.CANARY:
        return False, ""
    return start_canary(production, policy, users, index, version, corpus_fingerprint(corpus),
                        slots, share, batch_end(batch), get_run_logger())
