"""Everything a reviewer sees in MLflow: one run per retrain, params, counts, both
models' metrics, per-query results, a plot, the GX validation results, the decision."""

from __future__ import annotations

import dataclasses
import html
import math
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from embedloop.config import Settings
from embedloop.ingest.validation import LogValidation, SuiteOutcome
from embedloop.judge.evidence import InterleavedComparison, Source
from embedloop.judge.policy import Judgement, UsersEvidence
from embedloop.judge.sequential import boundary_curve
from embedloop.models.encoding import Runtime
from embedloop.production.registry import Registry, is_tracking_server
from embedloop.report.history import champion_history
from embedloop.report.summary import RunSummary

if TYPE_CHECKING:
    from embedloop.learn.fusion import FusionChoice
    from embedloop.learn.pairs import MinedNegatives, TrainingData
    from embedloop.learn.training import FineTuneResult


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_values(registry: Registry, run_id: str, *, metrics: dict[str, float] | None = None,
               params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
               step: int = 0) -> None:
    """Metrics, params and tags in one request (MLflow splits it at its own limits): one
    call each cost ~20 ms on sqlite and a round trip on a tracking server, ~100 a run."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    registry.client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def start_tracking(registry: Registry, settings: Settings, trigger: str, reason: str,
                   incumbent: str | None, flow_run_id: str | None,
                   runtime: Runtime | None = None) -> str:
    """An MLflow run with the settings as params; `runtime`: choices made on this machine
    (device, precision and why), so a slow run can be explained from the UI."""
    tags = {"trigger": trigger, "reason": reason, "code_version": code_version(),
            "incumbent_version": incumbent or "none", "prefect_flow_run_id": flow_run_id or "",
            "mlflow.note.content": f"{trigger} retrain: {reason}"}
    run_id = registry.start_run(f"retrain-{trigger}", tags)
    params: dict[str, Any] = {
        "logs": settings.logs, "corpus": settings.corpus, "base_model": settings.base_model
        or "bundled all-MiniLM-L6-v2", "primary_metric": settings.primary_metric,
        "min_improvement": settings.min_improvement, "holdout_fraction":
        settings.holdout_fraction, "max_quarantine_share": settings.max_quarantine_share,
        "min_clicks": settings.min_clicks, "max_seq_length": settings.max_seq_length,
        "significance_alpha": settings.significance_alpha, "eval_labels": settings.eval_labels,
        "mine_negatives": settings.mine_negatives,
        "negative_relative_margin": settings.negative_relative_margin,
        "weight_by_relevance": settings.weight_by_relevance, "train_side": settings.train_side,
        "retriever": settings.retriever,
        **({"fusion_weight": settings.fusion_weight, "fusion_method": settings.fusion_method,
            "fusion_depth": settings.fusion_depth, "lexical_language": settings.lexical_language,
            "lexical_cjk": settings.lexical_cjk} if settings.retriever == "hybrid" else {}),
        **{f"train.{k}": v for k, v in dataclasses.asdict(settings.training).items()},
        **({"device": runtime.device, "precision": f"{runtime.precision} ({runtime.why})",
            "encoder": f"{runtime.encoder} ({runtime.encoder_why or runtime.why})"}
           if runtime else {})}
    log_values(registry, run_id, params=params)
    return run_id


def render_validation_html(outcome: SuiteOutcome, validation: LogValidation) -> str:
    """A small Data-Docs-like page: each expectation, pass/fail, rows caught."""
    rows = []
    for item in outcome.result.get("results", []):
        config = item.get("expectation_config", {})
        meta = config.get("meta") or {}
        # rows_failing: rows (GX saw each distinct value once; its counts are of values)
        unexpected = item.get("rows_failing",
                              (item.get("result") or {}).get("unexpected_count", ""))
        status = "pass" if item.get("success") else "FAIL"
        kind = html.escape(config.get("type", ""))
        rows.append(f"<tr class='{status}'><td>{status}</td><td>{kind}</td>"
                    f"<td>{html.escape(str(config.get('kwargs', {}).get('column', '')))}</td>"
                    f"<td>{html.escape(meta.get('reason', ''))}</td><td>{unexpected}</td></tr>")
    return (
        "<html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "td,th{padding:4px 8px;border-bottom:1px solid #ddd}.FAIL{background:#fdd}</style>"
        f"</head><body><h2>Suite {html.escape(outcome.suite)}</h2>"
        f"<p>{validation.input_rows} rows: {validation.accepted_count} accepted, "
        f"{validation.quarantined_count} quarantined.</p><table><tr><th></th><th>expectation</th>"
        "<th>column</th><th>reason</th><th>rows</th></tr>" + "".join(rows)
        + "</table></body></html>")


def log_validation(registry: Registry, run_id: str, validation: LogValidation,
                   batch_outcome: SuiteOutcome) -> None:
    client = registry.client
    window = ({"data_window_start": str(validation.accepted["ts"].min()),
               "data_window_end": str(validation.accepted["ts"].max())}
              if validation.accepted_count else {})  # the data window this run learned from
    log_values(registry, run_id, tags=window, metrics={
        "rows_ingested": validation.input_rows, "rows_accepted": validation.accepted_count,
        "rows_quarantined": validation.quarantined_count,
        "quarantined_share": validation.quarantined_share})
    client.log_dict(run_id, validation.outcome.result, "validation/interaction_log.json")
    client.log_dict(run_id, batch_outcome.result, "validation/interaction_batch.json")
    client.log_dict(run_id, validation.reason_counts, "validation/quarantined_by_reason.json")
    client.log_text(run_id, render_validation_html(validation.outcome, validation),
                    "validation/report.html")
    if validation.quarantined_count:
        client.log_table(run_id, validation.quarantine_sample(1000),
                         "validation/quarantine_sample.json")


def log_evaluation(registry: Registry, run_id: str, evaluation: Any,
                   judgement: Judgement, fusion: FusionChoice | None = None) -> None:
    """Both models' metrics on the pool (a hybrid ranker's each side's beside the fused
    ones), the judge's numbers under their typed keys (evidence.py), the per-query table
    (whole rankings and condensed), and the plot; a hybrid candidate's fusion weight, the
    incumbent's, and the tune queries' score at every weight (a curve).
    `evaluation` is embedloop.judge.offline.Evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = registry.client
    candidate, incumbent = evaluation.pool
    log_values(registry, run_id, metrics={
        **{f"{name}.{metric.replace('@', '_at_')}": value
           for name, report in (("candidate", candidate), ("incumbent", incumbent))
           for metric, value in report.means.items()},
        **{f"{name}.{side}.{metric.replace('@', '_at_')}": value
           for name, report in (("candidate", candidate), ("incumbent", incumbent))
           for side, alone in report.sides.items() for metric, value in alone.means.items()},
        **judgement.metrics(), "eval_queries": candidate.n_queries})  # the pool's size
    if fusion is not None:
        log_values(registry, run_id, params={"candidate.fusion_weight": fusion.weight,
                                             "incumbent.fusion_weight": fusion.incumbent,
                                             "fusion.tune_queries": fusion.tune_queries},
                   tags={"fusion.why": fusion.why})
        for weight, score in fusion.scores.items():  # a curve in the run's metric charts
            log_values(registry, run_id, step=round(weight * 100),
                       metrics={f"fusion.tune_{candidate.primary_metric.replace('@', '_at_')}":
                                score})
    metric = candidate.primary_metric
    table = candidate.per_query.merge(incumbent.per_query, on="query",
                                      suffixes=("_candidate", "_incumbent"))
    table["delta"] = table[f"{metric}_candidate"] - table[f"{metric}_incumbent"]
    shown_c, shown_i = evaluation.pool_shown
    shown = shown_c.per_query[["query", metric]].merge(
        shown_i.per_query[["query", metric]], on="query", suffixes=("_candidate", "_incumbent"))
    table = table.merge(shown.rename(columns={
        f"{metric}_candidate": f"shown_{metric}_candidate",
        f"{metric}_incumbent": f"shown_{metric}_incumbent"}), on="query", how="left")
    table["shown_delta"] = (table[f"shown_{metric}_candidate"]
                            - table[f"shown_{metric}_incumbent"])
    client.log_table(run_id, table, "eval/per_query.json")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    left.hist([table["delta"], table["shown_delta"].dropna()], bins=21,
              color=["#4472c4", "#ed7d31"],
              label=["whole ranking", "over the documents users were shown"])
    left.axvline(0, color="black", linewidth=1)
    left.legend(fontsize=7)
    # most queries usually tie, and their bar dwarfs the rest: the counts say it plainly
    better, worse = int((table["delta"] > 0).sum()), int((table["delta"] < 0).sum())
    left.set(title=f"per-query {metric}: candidate - incumbent\n{better} better, {worse} "
                   f"worse, {len(table) - better - worse} unchanged (whole ranking)",
             xlabel="delta", ylabel="queries")
    names = list(candidate.means)
    xs = range(len(names))
    for side, report, shift in (("incumbent", incumbent, -0.2), ("candidate", candidate, 0.2)):
        bars = right.bar([x + shift for x in xs], [report.means[m] for m in names], 0.4,
                         label=side)
        # the two bars often differ by a few thousandths: the values say what heights can't
        right.bar_label(bars, fmt="%.3f", rotation=90, padding=2, fontsize=7)
    right.set_xticks(list(xs), names)
    right.set(title=f"evaluation pool ({candidate.n_queries} queries never trained on)",
              ylim=(0, 1.3), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    right.legend(loc="upper center", ncol=2, fontsize=8)  # above the bars, never on them
    # The reason is long (effect, interval, what is missing): wrapped, not cut off.
    fig.suptitle(textwrap.fill(f"{judgement.action.upper()}: {judgement.reason}", 160),
                 fontsize=8)
    fig.tight_layout()
    client.log_figure(run_id, fig, "eval/comparison.png")
    plt.close(fig)


def log_training(registry: Registry, run_id: str, data: TrainingData, tuned: FineTuneResult,
                 negatives: MinedNegatives | None, window: tuple[str, str],
                 logs: str) -> None:
    """What the recipe chose for the candidate and why (side, mixing weight and the tune
    queries' score at every weight, negatives mined and passed over), and what it learned
    from, as MLflow datasets: the batch window's pairs, the replayed ones, the tune
    queries and the pool, so the run page shows the candidate's lineage."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    client = registry.client
    mixing = tuned.mixing
    params = {"recipe.side": tuned.side, "recipe.steps": tuned.steps,
              "recipe.mixing_weight": mixing.weight if mixing else 1.0,
              "recipe.tune_queries": mixing.tune_queries if mixing else len(data.tune_qrels),
              "recipe.negatives_mined": negatives.mined if negatives else 0,
              "recipe.negatives_near_duplicates": negatives.near_duplicates if negatives else 0}
    log_values(registry, run_id, params=params, tags={"recipe.why": mixing.why if mixing else
               ("full side: the candidate is the fine-tune as trained (a mix would "
                "re-encode the corpus at every weight)" if tuned.side == "full" else
                f"the fine-tune as trained: {len(data.tune_qrels)} tune queries are too "
                f"few to choose a mix on")})
    if mixing:  # the tune score against the weight: a curve in the run's metric charts
        for weight, score in mixing.scores.items():
            log_values(registry, run_id, step=round(weight * 100), metrics={
                "recipe.tune_ndcg_at_10": score, "recipe.tune_p_worse": mixing.p_worse[weight]})

    def labels(qrels: dict[str, dict[str, float]]) -> pd.DataFrame:
        return pd.DataFrame([(q, d, g) for q, docs in sorted(qrels.items())
                             for d, g in sorted(docs.items())],
                            columns=["query", "doc_id", "gain"])

    columns = [c for c in ("query", "doc_id", "negative_id", "clicks", "relevance")
               if c in data.pairs.columns]
    replayed = (data.pairs["replayed"] if "replayed" in data.pairs.columns
                else pd.Series(False, index=data.pairs.index))
    start, end = window
    inputs = [(data.pairs[~replayed][columns], f"clicks {start[:10]} to {end[:10]}", "training"),
              (data.pairs[replayed][columns], "replayed clicks (earlier batches)", "replay"),
              (labels(data.tune_qrels), "tune queries", "tuning"),
              (labels(data.eval_qrels), "evaluation pool", "evaluation")]
    client.log_inputs(run_id, datasets=[
        DatasetInput(mlflow.data.from_pandas(frame.reset_index(drop=True), source=logs,
                                             name=name)._to_mlflow_entity(),
                     tags=[InputTag("mlflow.data.context", context),
                           InputTag("window", f"{start} .. {end}")])
        for frame, name, context in inputs if len(frame)])


def log_users_evidence(registry: Registry, run_id: str, users: UsersEvidence) -> None:
    """Each interleaved comparison this run judged: its numbers (`canary.v3.evidence`,
    ...) and a plot of its evidence over the sessions, with the boundaries it must
    cross: wins minus losses against decided sessions, the usual picture of a
    sequential test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = registry.client
    for comparison in users.comparisons:
        prefix = f"{comparison.source}.v{comparison.challenger}"
        numbers = comparison.judgement.verdicts[0].numbers
        if not isinstance(numbers, InterleavedComparison):
            continue
        log_values(registry, run_id, metrics=numbers.metrics(prefix))
        decided = [v for v in comparison.votes if v]
        lead = np.cumsum(decided) if decided else np.zeros(0)
        fig, ax = plt.subplots(figsize=(8, 4.6))
        ax.plot(range(1, len(lead) + 1), lead, color="black", linewidth=1.2,
                label=f"v{comparison.challenger}'s wins minus v{comparison.opponent}'s")
        horizon = max(200, int(len(lead) * 1.5))
        for boundary, sign, label, color in (
                (numbers.boundary, 1, "better: promote" if comparison.source == Source.CANARY
                 else "better: the watch ends", "#2e7d32"),
                (numbers.harm_boundary, -1, "worse: stop" if comparison.source ==
                 Source.CANARY else "worse: roll back", "#c62828")):
            curve = boundary_curve(horizon, math.exp(-boundary))
            if curve:
                ax.plot([n for n, _ in curve], [sign * d for _, d in curve], color=color,
                        linestyle="--", label=f"boundary: {label}")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set(xlabel="decided sessions (clicks favoured one side), oldest first",
               ylabel="wins minus losses")
        ax.set_title(textwrap.fill(
            f"{comparison.source} v{comparison.challenger} against v{comparison.opponent}: "
            f"{comparison.judgement.action} - {numbers.sessions} sessions, {numbers.wins} "
            f"won, {numbers.losses} lost; evidence {numbers.evidence:.2f} of "
            f"{numbers.boundary:.2f}", 90), fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        client.log_figure(run_id, fig, f"online/{comparison.source}-v{comparison.challenger}"
                                       f".png")
        plt.close(fig)


def finish_tracking(registry: Registry, run_id: str, summary: RunSummary,
                    failed: bool = False) -> None:
    client = registry.client
    rolled = summary.rolled_back or [None, None]
    tags = {
        # The run page's description: the decision and why first, then the whole summary.
        "mlflow.note.content": f"**{summary.outcome.upper()}** ({summary.trigger}: "
                               f"{summary.reason}): {summary.decision_reason}\n\n"
                               f"{summary.to_markdown()}",
        "decision": summary.outcome, "decision_reason": summary.decision_reason[:5000],
        "champion_version": summary.champion_version or "none",
        **{key: value for key, value in (
            ("candidate_version", summary.candidate_version),
            ("canary_promoted", summary.canary_promoted),
            ("rolled_back_from", rolled[0]), ("rolled_back_to", rolled[1]),
            ("canary_started", summary.canary_started),
            ("judged_against", summary.judged_against),
            ("offline_decision", summary.offline)) if value}}
    metrics = {**{f"seconds.{stage}": s for stage, s in summary.stage_seconds.items()},
               "unreadable_files": len(summary.unreadable_files)}
    if summary.pairs:  # the pool's growth, run by run, in the metric charts
        metrics.update({"pool.queries": summary.eval_queries,
                        "pool.new_queries": summary.pool_new,
                        "train.mined_negatives": summary.mined_negatives})
    log_values(registry, run_id, metrics=metrics, tags=tags)
    if summary.outcome in ("promoted", "kept", "rolled back"):
        log_history_plot(registry, run_id)
    client.log_dict(run_id, summary.to_json(), "summary.json")
    client.log_text(run_id, summary.to_markdown(), "summary.md")
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")



def log_history_plot(registry: Registry, run_id: str) -> None:
    """The champion across the last 500 runs, this one included: what each candidate
    scored against its incumbent, which were promoted (by the gate, or later as a
    canary), the rollbacks, and (comparable from run to run) the champion's score on the
    fixed guard set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the most recent runs (this one among them); champion_history puts them in order
    runs = registry.client.search_runs([registry.experiment_id()], max_results=500,
                                       order_by=["attributes.start_time DESC"])
    history = champion_history({"started": r.info.start_time, "tags": r.data.tags,
                                "metrics": r.data.metrics} for r in runs)
    if history.empty:
        return
    xs = list(range(1, len(history) + 1))
    # the legend goes right of the plot (tight_layout makes room): inside, it hid points
    fig, ax = plt.subplots(figsize=(max(7.0, 0.7 * len(xs) + 3) + 3.5, 4.5))
    ax.plot(xs, history["champion_after"], color="black", linewidth=1.5,
            label="champion after the run (evaluation pool)")

    def mark(rows: Any, column: str, label: str, **style: Any) -> None:
        if rows.any():
            ax.scatter([x for x, r in zip(xs, rows, strict=True) if r],
                       history[column][rows], label=label, **style)

    judged = history["kind"] == "judged"
    promoted = history["promoted"]
    mark(judged, "incumbent", "incumbent (evaluation pool)", marker="o", facecolors="none",
         edgecolors="gray")
    mark(judged & promoted, "candidate", "candidate, promoted", marker="^", color="#2e7d32",
         s=60)
    mark(judged & ~promoted, "candidate", "candidate, not promoted offline", marker="x",
         color="#c62828", s=60)
    mark(history["kind"] == "canary", "candidate",
         "canary, promoted on interleaved clicks (its score when judged)", marker="D",
         color="#2e7d32", s=45)
    mark(history["kind"] == "rollback", "champion_after", "rollback", marker="v",
         color="#6a1b9a", s=60)
    if history["guard_champion_after"].notna().any():
        ax.plot(xs, history["guard_champion_after"], color="#1565c0", linestyle="--",
                marker=".", label="champion on the guard set (comparable across runs)")
    for x, row in zip(xs, history.itertuples(), strict=True):
        champion = row.candidate_version if row.promoted else row.incumbent_version
        if not math.isnan(row.champion_after):  # a version never scored: no point to label
            ax.annotate(f"v{champion}", (x, row.champion_after), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=8)
    counts = history["kind"].value_counts()
    extra = "".join(f", {counts[kind]} {name}{'s' if counts[kind] > 1 else ''}"
                    for kind, name in (("canary", "canary promotion"), ("rollback", "rollback"))
                    if kind in counts)
    ax.set(xticks=xs, xlabel="retrain or rollback (oldest first)", ylabel="primary metric")
    ax.set_title(f"champion history: {counts.get('judged', 0)} judged runs{extra}\n"
                 f"(promoted offline when credibly better, else by users' clicks on the "
                 f"canary)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    registry.client.log_figure(run_id, fig, "eval/champion_history.png")
    plt.close(fig)


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a reviewer opens the run: the server's page, or the command that serves one.
    The page asks for MLflow 3's model-training view: its UI starts in the GenAI one
    (traces, token usage), whose menus hold nothing of a retrain."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if is_tracking_server(tracking_uri):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return (f"`mlflow ui --backend-store-uri {tracking_uri}` then "
            f"http://127.0.0.1:5000/{page}")
