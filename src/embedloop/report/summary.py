"""The run summary: what happened, in numbers, for the terminal, MLflow and Prefect."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from embedloop.ingest.logs import Ingested
from embedloop.ingest.validation import LogValidation
from embedloop.judge.evidence import InterleavedComparison, OfflineComparison, SanityCheck, Source
from embedloop.judge.policy import Judgement, UsersEvidence


@dataclass
class RunSummary:
    trigger: str
    reason: str
    # promoted | kept | rolled back | no-new-data | rejected (the batch) | failed
    outcome: str = "running"
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
    near_duplicate_negatives: int = 0  # mined negatives passed over as paraphrases
    train_side: str = ""  # "query" or "full": what the candidate's training moved
    # the share of the fine-tune the candidate keeps (1 unmixed) and why
    mixing_weight: float | None = None
    mixing_why: str = ""
    # a hybrid candidate's fusion weight (the dense side's share) and why
    fusion_weight: float | None = None
    fusion_why: str = ""
    candidate: dict[str, float] = field(default_factory=dict)  # on the pool
    incumbent: dict[str, float] = field(default_factory=dict)
    offline: str = ""  # the judge's action on this run's candidate (judge.Action)
    # every number the offline judgement used, under typed keys (evidence.py)
    evidence: dict[str, float] = field(default_factory=dict)
    recent: dict[str, float] = field(default_factory=dict)  # the pool's recent slice
    # the interleaved comparisons this run judged: source, challenger, opponent, action,
    # reason and their numbers (evidence.InterleavedComparison's fields)
    online: list[dict[str, Any]] = field(default_factory=list)
    canary_started: str | None = None  # this run's candidate, started as a canary
    canary_promoted: str | None = None  # a canary this run promoted
    rolled_back: list[str] = field(default_factory=list)  # [from, to]: the watch's rollback
    incumbent_version: str | None = None  # the champion when the run started
    judged_against: str | None = None  # the champion the candidate was judged against
    candidate_version: str | None = None
    champion_version: str | None = None
    live_index: str | None = None
    mlflow_run_id: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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
        out += [(label, online_line(c)) for c in self.online
                for label in [f"{c['source']} v{c['challenger']}"]]
        if self.pairs:
            side = {"query": "; query side: the document vectors were kept",
                    "full": "; both sides, corpus re-encoded"}.get(self.train_side, "")
            duplicates = (f", {self.near_duplicate_negatives} near-duplicates of a positive "
                          f"passed over" if self.near_duplicate_negatives else "")
            out += [("training pairs", f"{self.pairs} ({self.train_queries} queries, "
                                       f"{self.mined_negatives} corpus-mined negatives"
                                       f"{duplicates}{side})")]
            if self.mixing_weight is not None:
                out.append(("mix", f"{self.mixing_weight:g} of the fine-tune: "
                                   f"{self.mixing_why}"))
            if self.fusion_weight is not None:
                out.append(("fusion weight", f"{self.fusion_weight:g} dense: "
                                             f"{self.fusion_why}"))
            out += [
                    ("evaluation pool", f"{self.eval_queries} queries never trained on "
                                        f"({self.pool_new} new in this batch)")]
        for metric in self.candidate:
            inc = self.incumbent.get(metric, math.nan)
            cand = self.candidate[metric]
            out.append((metric, f"candidate {cand:.4f}  incumbent {inc:.4f}  "
                                f"({cand - inc:+.4f})"))
        for source, label in ((Source.POOL, "pool"), (Source.GUARD, "guard set"),
                              (Source.JUDGED, "judged queries")):
            numbers = OfflineComparison.from_metrics(source, self.evidence)
            if numbers is not None:
                out.append((label, offline_line(numbers)))
        if self.recent:
            out.append(("recent slice", f"{self.recent['delta']:+.4f} on "
                                        f"{int(self.recent['queries'])} pool queries asked "
                                        f"in this batch"))
        sanity = SanityCheck.from_metrics(Source.SANITY, self.evidence)
        if sanity is not None:
            out.append(("sanity", "vectors not finite" if not sanity.finite else
                        f"query spread {sanity.spread:.3f} (incumbent "
                        f"{sanity.incumbent_spread:.3f})"))
        out += [("decision", self.outcome.upper()), ("why", self.decision_reason)]
        if self.canary_started:
            out.append(("canary started", f"v{self.canary_started}: interleaved with the "
                                          f"champion until users' clicks decide"))
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


def offline_line(n: OfflineComparison) -> str:
    """One offline comparison: the gain over whole rankings and its credibility, then
    the gain over what users were shown and the harm bound."""
    credible = (f"p={n.p_better:.4f} (credible below {n.alpha:.4f}), 95% CI "
                f"[{n.ci_low:+.4f}, {n.ci_high:+.4f}]" if n.alpha < 1.0 else "significance off")
    return (f"{n.delta:+.4f} on {n.queries} queries, {credible}; over shown documents "
            f"{n.condensed_delta:+.4f}, upper bound {n.harm_bound:+.4f} (harm below "
            f"-{n.margin:g})")


def online_line(comparison: dict[str, Any]) -> str:
    """One interleaved comparison: against whom, the sessions, and the evidence."""
    n = InterleavedComparison.from_metrics(Source(comparison["source"]),
                                           comparison.get("metrics", {}))
    head = f"{comparison['action']} (against v{comparison['opponent']})"
    if n is None:
        return f"{head}: {comparison['reason']}"
    share = f" ({n.win_share:.0%})" if n.wins + n.losses else ""
    needed = (f"; at {n.wins + n.losses} decided it needs {n.wins_needed} wins"
              if n.wins_needed >= 0 else "")
    return (f"{head}: {n.sessions} sessions of pool queries, v{comparison['challenger']} won "
            f"{n.wins}{share}, v{comparison['opponent']} {n.losses}; evidence "
            f"{n.evidence:.2f} of {n.boundary:.2f}, harm {n.harm_evidence:.2f} of "
            f"{n.harm_boundary:.2f}{needed}")


@dataclass(frozen=True)
class RunStart:
    """Who started the run and why, the champion it started with, its MLflow run."""

    trigger: str
    reason: str
    incumbent_version: str
    mlflow_run_id: str


@dataclass(frozen=True)
class JudgedAgainst:
    """The champion this run's candidate is trained from and judged against (after users'
    evidence may have moved it)."""

    version: str


@dataclass(frozen=True)
class Registered:
    """The candidate's version in the registry."""

    version: str


@dataclass(frozen=True)
class Shipped:
    """What production did with the candidate: made it live (its index), or started it as
    a canary, or neither; the judgement as the run reports it (the canary's why added)."""

    judgement: Judgement
    promoted_index: str | None = None
    canary_started: str | None = None


# What a run's stages return: Ingested, LogValidation, UsersEvidence, JudgedAgainst,
# TrainingData, MinedNegatives, FineTuneResult, FusionChoice, Evaluation, Judgement,
# Registered, Shipped.
StageResult = Any
R = TypeVar("R")
K = TypeVar("K")


class StageResults(list[StageResult]):
    """What the stages returned, in the order they ran, as far as the run got: the
    summary is made from these, whether the run finished or failed."""

    def keep(self, result: R) -> R:
        self.append(result)
        return result

    def latest(self, kind: type[K]) -> K | None:
        return next((r for r in reversed(self) if isinstance(r, kind)), None)


def summarize(start: RunStart, results: StageResults, outcome: str, why: str, *,
              champion: str | None, live_index: str | None, stage_seconds: dict[str, float],
              notes: Sequence[str] = ()) -> RunSummary:
    """The summary of a run from what its stages returned, as far as it got."""
    # here, not at the top: these load torch, which the CLI's quick commands never need
    from embedloop.judge.offline import Evaluation
    from embedloop.learn.fusion import FusionChoice
    from embedloop.learn.pairs import MinedNegatives, TrainingData
    from embedloop.learn.training import FineTuneResult

    new, validation = results.latest(Ingested), results.latest(LogValidation)
    users, data = results.latest(UsersEvidence), results.latest(TrainingData)
    negatives, tuned = results.latest(MinedNegatives), results.latest(FineTuneResult)
    evaluation, judgement = results.latest(Evaluation), results.latest(Judgement)
    shipped, against = results.latest(Shipped), results.latest(JudgedAgainst)
    registered, fusion = results.latest(Registered), results.latest(FusionChoice)
    recent, candidate, incumbent = {}, {}, {}
    if evaluation is not None:
        candidate, incumbent = evaluation.candidate.means, evaluation.incumbent.means
        cand, inc = evaluation.recent
        if cand.n_queries:
            recent = {"delta": cand.primary - inc.primary, "queries": float(cand.n_queries)}
    rolled = users.rolled_back if users else None
    return RunSummary(
        trigger=start.trigger, reason=start.reason, outcome=outcome, decision_reason=why,
        rows_ingested=new.rows if new else 0,
        rows_accepted=validation.accepted_count if validation else 0,
        rows_quarantined=validation.quarantined_count if validation else 0,
        quarantined_by_reason=validation.reason_counts if validation else {},
        unreadable_files=new.unreadable if new else {},
        pairs=len(data.pairs) if data else 0, train_queries=data.train_queries if data else 0,
        eval_queries=data.eval_queries if data else 0, pool_new=data.pool_new if data else 0,
        mined_negatives=negatives.mined if negatives else 0,
        near_duplicate_negatives=negatives.near_duplicates if negatives else 0,
        train_side=tuned.side if tuned else "",
        mixing_weight=tuned.mixing.weight if tuned and tuned.mixing else None,
        mixing_why=tuned.mixing.why if tuned and tuned.mixing else "",
        fusion_weight=fusion.weight if fusion else None, fusion_why=fusion.why if fusion else "",
        candidate=candidate, incumbent=incumbent,
        offline=judgement.action.value if judgement else "",
        evidence=judgement.metrics() if judgement else {}, recent=recent,
        online=[{"source": c.source.value, "challenger": c.challenger,
                 "opponent": c.opponent, "action": c.judgement.action.value,
                 "reason": c.judgement.reason, "metrics": c.judgement.metrics()}
                for c in (users.comparisons if users else [])],
        canary_started=shipped.canary_started if shipped else None,
        canary_promoted=users.promoted if users else None,
        rolled_back=[rolled.rolled_back, rolled.champion] if rolled else [],
        incumbent_version=start.incumbent_version,
        judged_against=against.version if against else None,
        candidate_version=registered.version if registered else None,
        champion_version=champion, live_index=live_index, mlflow_run_id=start.mlflow_run_id,
        stage_seconds=dict(stage_seconds), notes=[*notes, *(new.notes if new else [])])
