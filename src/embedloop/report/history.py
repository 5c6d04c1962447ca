"""The champion's history across retrains, for the plot a reviewer reads first. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from embedloop.judge.evidence import OfflineComparison, Source

HISTORY_COLUMNS = ("started", "kind", "incumbent_version", "candidate_version", "promoted",
                   "incumbent", "candidate", "champion_after", "guard_champion_after")
NAN = float("nan")
# Runs recorded before the evidence contract wrote their gate's numbers under these keys.
LEGACY = {"candidate": "gate.candidate", "incumbent": "gate.incumbent",
          "guard_candidate": "gate.guard_candidate", "guard_incumbent": "gate.guard_incumbent"}


def _scores(metrics: Mapping[str, float]) -> dict[str, float] | None:
    """candidate, incumbent (and guard_candidate, guard_incumbent when there was a guard
    set) on the primary metric, from the typed pool and guard records (evidence.py), or
    from an older run's gate.* metrics."""
    pool = OfflineComparison.from_metrics(Source.POOL, metrics)
    if pool is not None:
        out = {"candidate": pool.candidate, "incumbent": pool.incumbent}
        guard = OfflineComparison.from_metrics(Source.GUARD, metrics)
        if guard is not None:
            out.update(guard_candidate=guard.candidate, guard_incumbent=guard.incumbent)
        return out
    if LEGACY["candidate"] in metrics:
        return {name: metrics[key] for name, key in LEGACY.items() if key in metrics}
    return None


def champion_history(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per event that judged a candidate or changed the champion, oldest first.

    Each run is {"started", "tags", "metrics"}. The evaluation pool grows from run to run;
    only the guard-set column compares like with like across runs.

    `kind` says what the row is:
    - "rollback": the champion moved back, by `embedloop rollback` (tags
      `incumbent_version` -> `champion_version`) or by the watch in a retrain (tags
      `rolled_back_from` -> `rolled_back_to`); each version's score is its latest;
    - "canary": a candidate promoted on interleaved clicks (tag `canary_promoted`), its
      scores those of the run that judged it offline;
    - "judged": a candidate scored against its incumbent (tag `judged_against`),
      promoted at once or not (tag `offline_decision`).
    A retrain can hold all three, in that order (users' evidence comes first in a run).
    """
    rows: list[dict[str, Any]] = []
    scores: dict[str, float] = {}  # version -> its latest score on the evaluation pool
    guards: dict[str, float] = {}  # version -> its latest score on the guard set

    def add(kind: str, incumbent: str, candidate: str, promoted: bool, started: Any,
            guard: float | None = None) -> None:
        """`guard`: the champion's guard score from this very run (judged rows); other
        rows take its latest."""
        after = candidate if promoted else incumbent
        rows.append({"kind": kind, "promoted": promoted, "started": started,
                     "incumbent_version": incumbent, "candidate_version": candidate,
                     "incumbent": scores.get(incumbent, NAN),
                     "candidate": scores.get(candidate, NAN),
                     "champion_after": scores.get(after, NAN),
                     "guard_champion_after": guards.get(after, NAN) if guard is None
                     else guard})

    for run in sorted(runs, key=lambda r: r["started"]):
        metrics, tags, started = run["metrics"], run["tags"], run["started"]
        decision = tags.get("decision")
        if decision == "rolled back" and "champion_version" in tags and \
                "rolled_back_to" not in tags:  # the rollback command
            add("rollback", tags.get("incumbent_version", "?"), tags["champion_version"],
                True, started)
            continue
        if tags.get("rolled_back_to"):
            add("rollback", tags.get("rolled_back_from", "?"), tags["rolled_back_to"], True,
                started)
        judged = _scores(metrics)
        canary = tags.get("canary_promoted") or (  # before the contract: no evaluation
            tags.get("candidate_version") if decision == "promoted" and tags.get("canary")
            and judged is None else None)
        if canary:
            add("canary", tags.get("incumbent_version", "?"), canary, True, started)
        if judged is None or decision not in ("promoted", "kept", "rolled back"):
            continue
        incumbent = tags.get("judged_against") or tags.get("incumbent_version", "?")
        candidate = tags.get("candidate_version", "?")
        action = tags.get("offline_decision")
        promoted = action == "promote" if action else (
            decision == "promoted" and not tags.get("canary"))  # before the contract
        scores.update({incumbent: judged["incumbent"], candidate: judged["candidate"]})
        for version, key in ((incumbent, "guard_incumbent"), (candidate, "guard_candidate")):
            if key in judged:
                guards[version] = judged[key]
        add("judged", incumbent, candidate, promoted, started,
            judged.get("guard_candidate" if promoted else "guard_incumbent", NAN))
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
