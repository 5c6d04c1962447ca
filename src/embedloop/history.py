"""The champion's history across retrains, for the plot a reviewer reads first. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

HISTORY_COLUMNS = ("started", "kind", "incumbent_version", "candidate_version", "promoted",
                   "incumbent", "candidate", "champion_after", "guard_champion_after")
NAN = float("nan")


def champion_history(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run that judged a candidate or changed the champion, oldest first.

    Each run is {"started", "tags", "metrics"} with the gate's numbers as metrics
    (`gate.candidate`, `gate.incumbent`, optionally `gate.guard_candidate` and
    `gate.guard_incumbent`) and `decision` among the tags. The evaluation pool grows
    from run to run; only the guard-set column compares like with like across runs.

    `kind` says what the row is:
    - "judged": a candidate scored against its incumbent, promoted or kept;
    - "canary": a kept candidate promoted later on interleaved clicks, in a run that
      evaluated nothing; its scores are those of the run that judged it;
    - "rollback": the champion moved back (tags `incumbent_version` -> `champion_version`);
      each version's score is its latest (NaN if it was never scored).
    """
    rows = []
    scores: dict[str, float] = {}  # version -> its latest score on the evaluation pool
    guards: dict[str, float] = {}  # version -> its latest score on the guard set
    for run in sorted(runs, key=lambda r: r["started"]):
        metrics, tags = run["metrics"], run["tags"]
        decision = tags.get("decision")
        incumbent = tags.get("incumbent_version", "?")
        candidate = tags.get("candidate_version", "?")
        if "gate.candidate" in metrics and decision in ("promoted", "kept"):
            promoted = decision == "promoted"
            scores.update({incumbent: metrics["gate.incumbent"],
                           candidate: metrics["gate.candidate"]})
            for version, key in ((incumbent, "gate.guard_incumbent"),
                                 (candidate, "gate.guard_candidate")):
                if key in metrics:
                    guards[version] = metrics[key]
            after = candidate if promoted else incumbent
            guard = metrics.get("gate.guard_candidate" if promoted else "gate.guard_incumbent")
            rows.append({"kind": "judged", "promoted": promoted,
                         "incumbent": metrics["gate.incumbent"],
                         "candidate": metrics["gate.candidate"],
                         "guard_champion_after": NAN if guard is None else guard})
        elif decision == "promoted" and tags.get("canary"):  # no evaluation in this run
            after = candidate
            rows.append({"kind": "canary", "promoted": True,
                         "incumbent": scores.get(incumbent, NAN),
                         "candidate": scores.get(candidate, NAN)})
        elif decision == "rolled back" and "champion_version" in tags:
            candidate = after = tags["champion_version"]
            rows.append({"kind": "rollback", "promoted": True,
                         "incumbent": scores.get(incumbent, NAN),
                         "candidate": scores.get(candidate, NAN)})
        else:
            continue
        rows[-1].setdefault("guard_champion_after", guards.get(after, NAN))
        rows[-1].update(started=run["started"], incumbent_version=incumbent,
                        candidate_version=candidate, champion_after=scores.get(after, NAN))
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
