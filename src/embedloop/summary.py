"""The run summary: what happened, in numbers, for the terminal, MLflow and Prefect."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedloop.logs import Ingested
    from embedloop.pairs import TrainingData
    from embedloop.promotion import CanaryVerdict, Decision
    from embedloop.validation import LogValidation


@dataclass
class RunSummary:
    trigger: str
    reason: str
    outcome: str = "running"  # promoted | kept | no-new-data | rejected | failed
    decision_reason: str = ""
    rows_ingested: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    unreadable_files: dict[str, str] = field(default_factory=dict)  # name -> why, skipped
    pairs: int = 0
    train_queries: int = 0
    eval_queries: int = 0  # the evaluation pool
    pool_new: int = 0  # pool queries first seen in this batch
    mined_negatives: int = 0
    train_side: str = ""  # "query" or "full": what the candidate's training moved
    candidate: dict[str, float] = field(default_factory=dict)
    incumbent: dict[str, float] = field(default_factory=dict)
    gate: dict[str, float] = field(default_factory=dict)  # every number the decision used
    incumbent_version: str | None = None
    candidate_version: str | None = None
    champion_version: str | None = None
    live_index: str | None = None
    mlflow_run_id: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the interleaved canary: the one judged by this run, and one it started
    canary: dict[str, Any] = field(default_factory=dict)
    canary_started: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines in reading order."""
        out = [("trigger", f"{self.trigger} - {self.reason}"),
               ("rows ingested", str(self.rows_ingested)),
               ("  accepted", str(self.rows_accepted)),
               ("  quarantined", str(self.rows_quarantined))]
        out += [(f"    {code}", str(n)) for code, n in self.quarantined_by_reason.items()]
        if self.unreadable_files:
            out.append(("unreadable files", f"{len(self.unreadable_files)} skipped, not read "
                                            f"again until they change: "
                                            + "; ".join(f"{name} ({why})" for name, why
                                                        in self.unreadable_files.items())))
        if self.pairs:
            side = {"query": "; query side: the document vectors were kept",
                    "full": "; both sides, corpus re-encoded"}.get(self.train_side, "")
            out += [("training pairs", f"{self.pairs} ({self.train_queries} queries, "
                                       f"{self.mined_negatives} corpus-mined negatives"
                                       f"{side})"),
                    ("evaluation pool", f"{self.eval_queries} queries never trained on "
                                        f"({self.pool_new} new in this batch)")]
        for metric in self.candidate:
            inc = self.incumbent.get(metric, float("nan"))
            cand = self.candidate[metric]
            out.append((metric, f"candidate {cand:.4f}  incumbent {inc:.4f}  "
                                f"({cand - inc:+.4f})"))
        if "p_value" in self.gate:
            low, high = self.gate["ci_low"], self.gate["ci_high"]
            out.append(("significance", f"p={self.gate['p_value']:.4f}, 95% CI of the gain "
                                        f"[{low:+.4f}, {high:+.4f}]"))
        if "look" in self.gate:
            out.append(("evidence", f"look {int(self.gate['look'])} at champion "
                                    f"v{self.incumbent_version}: p must be below "
                                    f"{self.gate['alpha_look']:.4f}; "
                                    f"{self.gate['alpha_spent']:.4f} of alpha "
                                    f"{self.gate.get('alpha', 0.05):g} spent so far"))
        if "recent_delta" in self.gate:
            out.append(("recent slice", f"{self.gate['recent_delta']:+.4f} on "
                                        f"{int(self.gate['recent_queries'])} pool queries "
                                        f"asked in this batch"))
        if "guard_delta" in self.gate:
            out.append(("guard set", f"{self.gate['guard_delta']:+.4f} on "
                                     f"{int(self.gate['guard_queries'])} fixed queries"))
        if self.canary:
            out.append(("canary", f"v{self.canary['version']}: {self.canary['action']} - "
                                  f"{self.canary['reason']}"))
        out += [("decision", self.outcome.upper()), ("why", self.decision_reason)]
        if self.canary_started:
            out.append(("canary started", f"v{self.canary_started}: interleaved with the "
                                          f"champion until its clicks decide"))
        if self.candidate_version:
            out.append(("candidate version", f"v{self.candidate_version}"))
        out += [("champion now", f"v{self.champion_version}" if self.champion_version else "-"),
                ("live index", self.live_index or "-")]
        if self.mlflow_run_id:
            out.append(("mlflow run", self.mlflow_run_id))
        if self.stage_seconds:
            out.append(("seconds", ", ".join(f"{k} {v:.1f}" for k, v in
                                             self.stage_seconds.items())))
        out += [("note", n) for n in self.notes]
        return out

    def to_text(self) -> str:
        width = max(len(label) for label, _ in self.rows())
        return "\n".join(f"{label:<{width}}  {value}" for label, value in self.rows())

    def to_markdown(self) -> str:
        lines = ["| | |", "|---|---|"]
        lines += [f"| {label.strip()} | {value} |" for label, value in self.rows()]
        return "\n".join(lines)


@dataclass
class RunResults:
    """What the run's stages returned, as far as it got: the summary is made from these."""

    trigger: str
    reason: str
    incumbent_version: str | None = None
    mlflow_run_id: str | None = None
    new: Ingested | None = None
    validation: LogValidation | None = None
    data: TrainingData | None = None
    mined_negatives: int = 0
    train_side: str = ""
    candidate: dict[str, float] = field(default_factory=dict)  # means on the pool
    incumbent: dict[str, float] = field(default_factory=dict)
    decision: Decision | None = None
    candidate_version: str | None = None
    promoted_index: str | None = None  # the candidate's index, live since publish
    canary: CanaryVerdict | None = None
    canary_started: CanaryVerdict | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self, outcome: str, why: str, *, live_index: str | None,
                stage_seconds: dict[str, float]) -> RunSummary:
        new, validation, data = self.new, self.validation, self.data
        return RunSummary(
            trigger=self.trigger, reason=self.reason, outcome=outcome, decision_reason=why,
            rows_ingested=new.rows if new else 0,
            rows_accepted=validation.accepted_count if validation else 0,
            rows_quarantined=validation.quarantined_count if validation else 0,
            quarantined_by_reason=validation.reason_counts if validation else {},
            unreadable_files=new.unreadable if new else {},
            pairs=len(data.pairs) if data else 0, train_queries=data.train_queries if data else 0,
            eval_queries=data.eval_queries if data else 0, pool_new=data.pool_new if data else 0,
            mined_negatives=self.mined_negatives, train_side=self.train_side,
            candidate=self.candidate,
            incumbent=self.incumbent, gate=self.decision.numbers if self.decision else {},
            incumbent_version=self.incumbent_version, candidate_version=self.candidate_version,
            champion_version=(self.candidate_version if self.promoted_index
                              else self.incumbent_version),
            live_index=live_index, mlflow_run_id=self.mlflow_run_id,
            stage_seconds=dict(stage_seconds),
            notes=[*self.notes, *(new.notes if new else [])],
            canary={} if self.canary is None else {
                "version": self.canary.version, "action": self.canary.action,
                "reason": self.canary.reason, **self.canary.numbers},
            canary_started=self.canary_started.version if self.canary_started else None)
