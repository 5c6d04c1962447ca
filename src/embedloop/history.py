"""The champion's history across retrains, for the plot a reviewer reads first. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

HISTORY_COLUMNS = ("started", "incumbent_version", "candidate_version", "promoted",
                   "incumbent", "candidate", "champion_after", "guard_champion_after")


def champion_history(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per judged retrain, oldest first.

    Each run is {"started", "tags", "metrics"} with the gate's numbers as metrics
    (`gate.candidate`, `gate.incumbent`, optionally `gate.guard_candidate` and
    `gate.guard_incumbent`) and `decision` among the tags. The evaluation pool grows
    from run to run; only the guard-set column compares like with like across runs.
    """
    rows = []
    for run in runs:
        metrics, tags = run["metrics"], run["tags"]
        if "gate.candidate" not in metrics or tags.get("decision") not in ("promoted", "kept"):
            continue
        promoted = tags["decision"] == "promoted"
        guard = metrics.get("gate.guard_candidate" if promoted else "gate.guard_incumbent")
        rows.append({
            "started": run["started"], "incumbent_version": tags.get("incumbent_version", "?"),
            "candidate_version": tags.get("candidate_version", "?"), "promoted": promoted,
            "incumbent": metrics["gate.incumbent"], "candidate": metrics["gate.candidate"],
            "champion_after": metrics["gate.candidate" if promoted else "gate.incumbent"],
            "guard_champion_after": float("nan") if guard is None else guard})
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return frame.sort_values("started", kind="stable").reset_index(drop=True)
