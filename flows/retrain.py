"""The retrain flow: ingest -> validate -> pairs -> fine-tune -> evaluate -> decide -> publish.

Evaluation is on the evaluation pool (queries never trained on, growing with every
batch), and each decision spends part of `significance_alpha` as one more look at the
champion (promotion.py).

Production (the `champion` alias and the live index) changes only in `promote_stage`,
after the candidate has been registered and its index written; every failure before
that leaves both exactly as they were, and the ledger is committed last, so rows are
read again by the next run rather than lost.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State

from embedloop.config import Settings, load_settings
from embedloop.corpus import corpus_fingerprint
from embedloop.encoding import choose_precision, load_model, pick_device
from embedloop.errors import BatchRejected, RecordingFailed, Refused
from embedloop.faults import crash_point, pause_point
from embedloop.index import IndexManifest, IndexStore, LoadedIndex, build_faiss_index
from embedloop.ledger import (
    load_accepted_history,
    load_guard_set,
    record_look,
    save_guard_set,
)
from embedloop.lock import exclusive
from embedloop.logs import discover_log_files
from embedloop.promotion import PromotionPolicy, should_promote
from embedloop.registry import CHAMPION, Registry
from embedloop.summary import RunSummary
from embedloop.validation import quarantine_whole_batch
from flows.alerts import notify_failure, refused
from tasks.evaluate import encode_corpus_stage, evaluate_stage
from tasks.ingest import ingest_logs, load_corpus_stage
from tasks.publish import (
    Champion,
    align_live_index,
    cache_local_model,
    commit_batch_stage,
    commit_cursors_stage,
    promote_stage,
    write_index_stage,
)
from tasks.tracking import (
    finish_tracking,
    log_evaluation,
    log_validation,
    mlflow_run_link,
    start_tracking,
)
from tasks.train import build_pairs_stage, fine_tune_stage, mine_negatives_stage
from tasks.validate import check_batch_stage, validate_logs_stage


@contextlib.contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started


@flow(name="retrain", flow_run_name="retrain-{trigger}", on_failure=[notify_failure],
      on_crashed=[notify_failure])
def retrain(reason: str, trigger: str = "manual", config_file: str | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """Retrain from the logs that arrived since the last run; promote only on improvement.

    Args:
        reason: why this run happens (recorded in MLflow and shown in Prefect).
        trigger: "schedule" for the nightly deployment, "manual" for a person.
        config_file: an embedloop.toml; default ./embedloop.toml if present.
        overrides: settings that win over the file and the environment.
    """
    settings = load_settings(Path(config_file) if config_file else None, **(overrides or {}))
    try:
        with exclusive(settings.state_dir, f"retrain ({trigger}: {reason})"):
            return run_retrain(settings, trigger=trigger, reason=reason).to_json()
    except Refused as exc:
        return refused(exc)


def run_retrain(settings: Settings, *, trigger: str, reason: str) -> RunSummary:
    logger = get_run_logger()
    summary = RunSummary(trigger=trigger, reason=reason)
    seconds = summary.stage_seconds
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    device = pick_device()
    precision, why = choose_precision(settings.encode_precision, device)
    logger.info("device %s, precision %s: %s", device, precision, why)

    discover_log_files(settings.logs)  # a wrong path fails now, not after the bootstrap
    with timed(seconds, "corpus"):
        corpus = load_corpus_stage(settings)
    with timed(seconds, "bootstrap"):
        champion = ensure_champion(settings, registry, corpus, device, precision)
    summary.incumbent_version = summary.champion_version = champion.version
    summary.notes += registry.repairs
    run_id = start_tracking(registry, settings, trigger, reason, champion.version,
                            str(flow_run.id) if flow_run.id else None,
                            {"device": device, "precision": f"{precision} ({why})"})
    summary.mlflow_run_id = run_id
    try:
        with timed(seconds, "ingest"):
            new, ledger = ingest_logs(settings)
        crash_point("ingest")
        summary.notes += new.notes
        summary.unreadable_files = new.unreadable
        summary.rows_ingested = len(new.frame)
        if new.frame.empty:
            summary.outcome = "no-new-data"
            summary.decision_reason = ("no new interaction rows since the last run; the "
                                       "champion and the live index are unchanged")
            if new.cursors:  # empty or unreadable files: remembered, not tried every night
                commit_cursors_stage(settings, ledger, new.cursors)
            return _finish(settings, registry, summary)

        batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
        with timed(seconds, "validate"):
            validation = validate_logs_stage(settings, new.frame, corpus, ledger)
            verdict = check_batch_stage(settings, validation)
        crash_point("validate")
        log_validation(registry, run_id, validation, verdict.outcome)
        summary.rows_accepted = len(validation.accepted)
        summary.rows_quarantined = len(validation.quarantined)
        summary.quarantined_by_reason = validation.reason_counts
        if not verdict.ok:
            why = "; ".join(verdict.problems)
            if validation.quarantined_share > settings.max_quarantine_share:
                # A broken tracker: keep the whole batch in quarantine and move on, so the
                # next run is not blocked by the same rows.
                commit_batch_stage(settings, ledger, new.cursors, batch_id,
                                   validation.accepted.iloc[0:0],
                                   quarantine_whole_batch(validation, why))
                where = settings.state_dir / "batches" / batch_id / "quarantine.parquet"
                raise BatchRejected(f"batch rejected before training: {why}. All "
                                    f"{validation.input_rows} rows are kept in {where}")
            raise BatchRejected(f"batch not trained on yet: {why}. Its rows stay unread "
                                f"and are read again, with newer ones, by the next run")

        guard_qrels = load_guard_set(settings.state_dir)
        with timed(seconds, "pairs"):
            data = build_pairs_stage(settings, validation.accepted, corpus,
                                     set(guard_qrels) if guard_qrels else None,
                                     load_accepted_history(settings.state_dir, ledger))
        summary.pairs, summary.train_queries = len(data.pairs), data.train_queries
        summary.eval_queries, summary.pool_new = data.eval_queries, data.pool_new

        with timed(seconds, "incumbent"):  # mines negatives, then is judged beside
            incumbent_model = load_model(champion.model_path, device, settings.max_seq_length)
            incumbent_index = _incumbent_index(settings, champion, incumbent_model, corpus,
                                               precision, summary)
        if settings.hard_negatives and settings.mine_negatives:
            with timed(seconds, "negatives"):
                summary.mined_negatives = mine_negatives_stage(
                    settings, data, incumbent_model, incumbent_index, corpus, precision)

        work_dir = settings.state_dir / "work" / batch_id
        with timed(seconds, "train"):
            tuned = fine_tune_stage.with_options(timeout_seconds=settings.train_timeout_s)(
                settings, champion.model_path, data.pairs, work_dir, device)

        with timed(seconds, "evaluate"):
            candidate_vectors = encode_corpus_stage(settings, tuned.model, str(tuned.path),
                                                    corpus, precision)
            candidate_index = _in_memory_index(settings, "candidate", candidate_vectors, corpus,
                                               precision)
            crash_point("evaluate")
            candidate = evaluate_stage(settings, "candidate", tuned.model, candidate_index,
                                       data.eval_qrels, precision)
            incumbent = evaluate_stage(settings, "incumbent", incumbent_model, incumbent_index,
                                       data.eval_qrels, precision)
            guard = None
            if guard_qrels:  # fixed queries: a gain on new logs must not hide a loss here
                guard = (evaluate_stage(settings, "candidate on guard set", tuned.model,
                                        candidate_index, guard_qrels, precision),
                         evaluate_stage(settings, "incumbent on guard set", incumbent_model,
                                        incumbent_index, guard_qrels, precision))
        # Counted before the decision is acted on: a crash can only overcount.
        look = record_look(settings.state_dir, champion.version)
        recent = (candidate.subset(data.recent_qrels), incumbent.subset(data.recent_qrels))
        decision = should_promote(candidate, incumbent, PromotionPolicy(
            primary_metric=settings.primary_metric, min_improvement=settings.min_improvement,
            min_eval_queries=settings.min_holdout_queries, alpha=settings.significance_alpha,
            guard_tolerance=settings.guard_tolerance), guard=guard, look=look, recent=recent)
        summary.gate = decision.numbers
        logger.info("decision: %s - %s", "promote" if decision.promote else "keep",
                    decision.reason)
        log_evaluation(registry, run_id, candidate, incumbent, decision)
        summary.candidate, summary.incumbent = candidate.means, incumbent.means

        with timed(seconds, "register"):
            pause_point("register")
            version = registry.log_model(
                run_id, tuned.model,
                description=(f"Fine-tuned from v{champion.version} on batch {batch_id} "
                             f"({len(data.pairs)} pairs). Decision: "
                             f"{'promoted' if decision.promote else 'not promoted'} - "
                             f"{decision.reason}"),
                tags={"decision": "promoted" if decision.promote else "not promoted",
                      "parent_version": champion.version, "batch": batch_id,
                      settings.primary_metric.replace("@", "_at_"): f"{decision.candidate:.4f}"})
            crash_point("register")  # a registered version that is no one's champion
            cache_local_model(settings, version, tuned.path)
        summary.candidate_version = version

        if decision.promote:
            with timed(seconds, "publish"):
                manifest = write_index_stage(settings, candidate_vectors, corpus, version,
                                             precision)
                crash_point("publish")  # a new index version on disk, not live
                pause_point("publish")
                promote_stage(settings, registry, version, manifest.version)
            summary.champion_version = version

        with timed(seconds, "commit"):
            if guard_qrels is None and data.eval_qrels:
                frozen = dict(sorted(data.eval_qrels.items())[: settings.guard_queries])
                save_guard_set(settings.state_dir, frozen, batch_id)
            commit_batch_stage(settings, ledger, new.cursors, batch_id, validation.accepted,
                               validation.quarantined)
        shutil.rmtree(work_dir, ignore_errors=True)
        summary.outcome = "promoted" if decision.promote else "kept"
        summary.decision_reason = decision.reason
        return _finish(settings, registry, summary)
    except BaseException as exc:
        summary.outcome = "rejected" if isinstance(exc, BatchRejected) else "failed"
        summary.decision_reason = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            summary.live_index = IndexStore(settings.index_dir).live_version()
            finish_tracking(registry, run_id, summary, failed=True)
            _summary_artifact(settings, registry, summary)
        if summary.champion_version != summary.incumbent_version and isinstance(exc, Exception):
            # Past the commit point: production did change. Say so, or on-call would
            # roll back a promotion that worked because its bookkeeping did not.
            raise RecordingFailed(
                f"the promotion is complete (champion v{summary.champion_version}, live "
                f"index {summary.live_index}), but recording this run failed: "
                f"{type(exc).__name__}: {exc}") from exc
        raise


def _finish(settings: Settings, registry: Registry, summary: RunSummary) -> RunSummary:
    summary.live_index = IndexStore(settings.index_dir).live_version()
    assert summary.mlflow_run_id is not None
    finish_tracking(registry, summary.mlflow_run_id, summary)
    _summary_artifact(settings, registry, summary)
    return summary


def _summary_artifact(settings: Settings, registry: Registry, summary: RunSummary) -> None:
    """The run's summary in the Prefect UI, failed runs included, linked to MLflow."""
    assert summary.mlflow_run_id is not None
    link = mlflow_run_link(settings.resolved_tracking_uri, registry.experiment_id(),
                           summary.mlflow_run_id)
    create_markdown_artifact(key="retrain-summary",
                             markdown=f"{summary.to_markdown()}\n\nMLflow run: {link}\n",
                             description=f"{summary.outcome}: {summary.decision_reason}"[:500])


def _in_memory_index(settings: Settings, version: str, vectors: Any, corpus: pd.DataFrame,
                     precision: str) -> LoadedIndex:
    """Built like the live index would be, so candidate and incumbent search alike."""
    spec = settings.index_spec(len(corpus))
    manifest = IndexManifest(version=version, model_name=settings.model_name,
                             model_version=version, dim=int(vectors.shape[1]),
                             n_docs=len(corpus), corpus_fingerprint=corpus_fingerprint(corpus),
                             precision=precision, kind=spec.kind,
                             created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                             params=spec.params)
    return LoadedIndex(manifest, build_faiss_index(vectors, spec), list(corpus["doc_id"]))


def _incumbent_index(settings: Settings, champion: Champion, model: Any, corpus: pd.DataFrame,
                     precision: str, summary: RunSummary) -> LoadedIndex:
    """The live index already holds the champion's vectors; reuse it unless the corpus
    has changed since it was built."""
    live = IndexStore(settings.index_dir).load()
    if (live.manifest.model_version == champion.version
            and live.manifest.corpus_fingerprint == corpus_fingerprint(corpus)):
        return live
    summary.notes.append(f"the corpus changed since live index {live.manifest.version} was "
                         f"built; the incumbent was re-encoded for a fair comparison")
    vectors = encode_corpus_stage(settings, model, champion.model_path, corpus, precision)
    return _in_memory_index(settings, "incumbent", vectors, corpus, precision)


def ensure_champion(settings: Settings, registry: Registry, corpus: pd.DataFrame, device: str,
                    precision: str) -> Champion:
    """First run: the base model becomes champion v1 with its own live index. Later runs:
    repair a live pointer left behind by a crash between the alias move and the swap."""
    version = registry.version_for_alias(CHAMPION)
    if version is None:
        get_run_logger().info("no champion yet: registering the base model %s",
                              settings.resolved_base_model)
        run_id = registry.start_run("bootstrap", {
            "trigger": "bootstrap", "reason": "first run: the base model becomes champion"})
        model = load_model(settings.resolved_base_model, device, settings.max_seq_length)
        version = registry.log_model(run_id, model, description=(
            f"Base model {settings.resolved_base_model}, registered as the first champion."),
            tags={"decision": "bootstrap"})
        cache_local_model(settings, version, Path(settings.resolved_base_model))
        vectors = encode_corpus_stage(settings, model, settings.resolved_base_model, corpus,
                                      precision)
        manifest = write_index_stage(settings, vectors, corpus, version, precision)
        promote_stage(settings, registry, version, manifest.version)
        registry.client.set_terminated(run_id, "FINISHED")
    elif align_live_index(settings, registry) is None:
        get_run_logger().warning("champion v%s has no index: rebuilding it", version)
        path = registry.local_model_path(version, settings.state_dir / "models")
        model = load_model(path, device, settings.max_seq_length)
        vectors = encode_corpus_stage(settings, model, path, corpus, precision)
        manifest = write_index_stage(settings, vectors, corpus, version, precision)
        IndexStore(settings.index_dir).set_live(manifest.version)
    return Champion(version, registry.local_model_path(version, settings.state_dir / "models"))
