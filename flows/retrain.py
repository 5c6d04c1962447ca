"""The retrain flow: the README's diagram, one task per stage.

    ingest -> validate -> users' evidence (watch: roll back? canaries: promote?)
        -> pairs -> fine-tune -> evaluate -> judge offline
        -> promote (credibly better) | canary (no harm: users decide) | keep | reject

The judge (judge.py) decides from typed evidence: offline evidence on the evaluation
pool (queries never trained on) screens for harm, and interleaved sessions of users
decide. Production (the `champion` alias and the live index) changes only at a commit
point: the watch's rollback, a canary's promotion, or `publish_stage` after the
candidate has been registered; every failure before one leaves both exactly as they
were, and the ledger is committed last, so rows are read again by the next run rather
than lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State

from embedloop.config import Settings, load_settings
from embedloop.encoding import choose_runtime
from embedloop.errors import BatchRejected, RecordingFailed, Refused
from embedloop.evidence import Source
from embedloop.judge import Action, Judgement, UsersEvidence
from embedloop.ledger import load_accepted_history, load_guard_set
from embedloop.lock import exclusive
from embedloop.logs import discover_log_files
from embedloop.production import Production
from embedloop.registry import CHAMPION
from embedloop.summary import RunResults, RunSummary
from embedloop.tracking import finish_tracking, mlflow_run_link
from flows.alerts import notify_failure, refused, send_alert
from tasks._stage import stage_clock
from tasks.canary import batch_end, batch_window, judge_users_stage, start_canary_stage
from tasks.evaluate import candidate_stage, evaluate_stage, incumbent_stage, judge_offline_stage
from tasks.ingest import (
    commit_batch_stage,
    commit_cursors_stage,
    ingest_and_validate_logs,
    load_corpus_stage,
)
from tasks.publish import ensure_champion_stage, publish_stage, register_stage
from tasks.tracking import (
    finish_tracking_stage,
    log_evaluation_stage,
    log_training_stage,
    log_users_stage,
    log_validation_stage,
    start_tracking_stage,
)
from tasks.train import build_pairs_stage, fine_tune_stage, mine_negatives_stage
from tasks.validate import check_batch_stage, reject_batch_stage


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
        with exclusive(settings.state_dir, f"retrain ({trigger}: {reason})"), \
                stage_clock() as seconds:
            return run_retrain(settings, trigger, reason, seconds).to_json()
    except Refused as exc:
        return refused(exc)


def run_retrain(settings: Settings, trigger: str, reason: str,
                seconds: dict[str, float]) -> RunSummary:
    runtime = choose_runtime(settings.encode_precision, settings.encode_backend)
    production = Production.from_settings(settings)
    discover_log_files(settings.logs)  # a wrong path fails now, not after the bootstrap
    corpus = load_corpus_stage(settings)
    champion = ensure_champion_stage(settings, production, corpus, runtime)
    run_id = start_tracking_stage(production.registry, settings, trigger, reason,
                                  champion.version, str(flow_run.id or ""), runtime)
    got = RunResults(trigger, reason, champion.version, run_id, notes=production.notes)
    batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
    # The run's scratch space (staged rows, checkpoints), removed however the run ends;
    # under the lock, what a killed run left there is no one's and goes too.
    shutil.rmtree(settings.state_dir / "work", ignore_errors=True)
    work_dir = settings.state_dir / "work" / batch_id
    try:
        got.new, validation, ledger = ingest_and_validate_logs(settings, corpus,
                                                              work_dir / "rows")
        if not got.new.rows:
            if got.new.cursors:  # empty or unreadable files: remembered, not tried nightly
                commit_cursors_stage(settings, ledger, got.new.cursors)
            return _finish(settings, production, got, seconds, "no-new-data",
                           "no new interaction rows since the last run; the champion and "
                           "the live index are unchanged")
        got.validation = validation
        verdict = check_batch_stage(settings, validation)
        log_validation_stage(production.registry, run_id, validation, verdict.outcome)
        if not verdict.ok:
            reject_batch_stage(settings, ledger, got.new.cursors, batch_id, validation, verdict,
                               work_dir)

        # Users' evidence first: a watched champion they like less is rolled back, a
        # canary they prefer is promoted; either way this batch trains from what is live.
        history = load_accepted_history(settings.state_dir, ledger)
        got.users = judge_users_stage(settings, production, champion.version,
                                      validation.accepted, history)
        log_users_stage(production.registry, run_id, got.users)
        if got.users.rolled_back:
            alert_rollback(settings, got.users)
        if got.users.promoted or got.users.rolled_back:
            champion = production.champion() or champion
        got.judged_against = champion.version

        guard_qrels = load_guard_set(settings.state_dir)
        got.data = data = build_pairs_stage(
            settings, validation.accepted, corpus, set(guard_qrels) if guard_qrels else None,
            history)
        incumbent, note = incumbent_stage(settings, production, champion, corpus, runtime)
        got.notes += [note] if note else []
        if settings.hard_negatives and settings.mine_negatives:
            got.negatives = mine_negatives_stage(settings, data, incumbent, corpus)
        tuned = fine_tune_stage.with_options(timeout_seconds=settings.train_timeout_s)(
            settings, champion.model_path, data, work_dir, runtime.device,
            incumbent.index)
        got.tuned = tuned
        log_training_stage(production.registry, run_id, data, tuned, got.negatives,
                           batch_window(validation.accepted), settings.logs)

        candidate = candidate_stage(settings, production.store, tuned, corpus, runtime,
                                    incumbent)
        evaluation = evaluate_stage(settings, candidate, incumbent, data, guard_qrels, corpus)
        got.candidate, got.incumbent = evaluation.candidate.means, evaluation.incumbent.means
        got.recent = evaluation.recent
        got.judgement = judgement = judge_offline_stage(settings, evaluation, run_id)
        log_evaluation_stage(production.registry, run_id, evaluation, judgement)
        got.candidate_version = register_stage(production, run_id, tuned, champion, judgement,
                                               batch_id, len(data.pairs),
                                               settings.primary_metric)

        if judgement.action == Action.PROMOTE:  # the commit point: champion and index move
            got.promoted_index = publish_stage(production, candidate.index,
                                               got.candidate_version, corpus,
                                               batch_end(validation.accepted))
        else:  # production stays as it is; the registered candidate says why
            started, why = start_canary_stage(settings, production, judgement, got.users,
                                              candidate.index, got.candidate_version, corpus,
                                              validation.accepted)
            got.canary_started = got.candidate_version if started else None
            judgement = dataclasses.replace(judgement, reason=f"{judgement.reason}; canary: "
                                                             f"{why}") if why else judgement

        first_pool = dict(sorted(data.eval_qrels.items())[: settings.guard_queries])
        assert validation.accepted_file and validation.quarantine_file
        commit_batch_stage(settings, ledger, got.new.cursors, batch_id,
                           validation.accepted_file, validation.quarantine_file,
                           freeze_guard=first_pool if guard_qrels is None else None)
        return _finish(settings, production, got, seconds, *_outcome(got, judgement))
    except BaseException as exc:
        outcome = "rejected" if isinstance(exc, BatchRejected) else "failed"
        with contextlib.suppress(Exception):
            _finish(settings, production, got, seconds, outcome,
                    f"{type(exc).__name__}: {exc}", failed=True)
        if got.promoted_index and isinstance(exc, Exception):
            # Past the commit point: production did change. Say so, or on-call would
            # roll back a promotion that worked because its bookkeeping did not.
            raise RecordingFailed(
                f"the promotion is complete (champion v{got.candidate_version}, live "
                f"index {got.promoted_index}), but recording this run failed: "
                f"{type(exc).__name__}: {exc}") from exc
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _outcome(got: RunResults, judgement: Judgement) -> tuple[str, str]:
    """The run's outcome and why, users' evidence first, then this run's candidate."""
    parts = [f"{c.source} v{c.challenger}: {c.judgement.action}: {c.judgement.reason}"
             for c in (got.users.comparisons if got.users else [])
             if c.judgement.action != Action.CONTINUE]
    parts.append(f"candidate v{got.candidate_version}: {judgement.action}: "
                 f"{judgement.reason}")
    if got.promoted_index or (got.users and got.users.promoted):
        outcome = "promoted"
    elif got.users and got.users.rolled_back:
        outcome = "rolled back"
    else:
        outcome = "kept"
    return outcome, " | ".join(parts)


def alert_rollback(settings: Settings, users: UsersEvidence) -> None:
    """One alert when the watch rolls a champion back: production changed by itself."""
    rolled = users.rolled_back
    assert rolled is not None
    watch = next(c for c in users.comparisons if c.source == Source.WATCH)
    send_alert({"text": f"embedloop: the watch rolled champion v{rolled.rolled_back} back to "
                        f"v{rolled.champion} (live index {rolled.live_index}): "
                        f"{watch.judgement.reason}",
                "event": "watch rollback", "model": settings.model_name,
                "rolled_back": rolled.rolled_back, "champion": rolled.champion,
                "live_index": rolled.live_index, "reason": watch.judgement.reason})


def _finish(settings: Settings, production: Production, got: RunResults,
            seconds: dict[str, float], outcome: str, why: str,
            failed: bool = False) -> RunSummary:
    """The summary, from the stages' results, to MLflow and to the Prefect UI."""
    summary = got.summary(outcome, why, champion=production.registry.version_for_alias(
        CHAMPION), live_index=production.store.live_version(), stage_seconds=seconds)
    assert summary.mlflow_run_id is not None
    # A failed run is recorded once, at once: retrying a tracking server that may be the
    # cause would only delay the alert and the exit.
    record = finish_tracking if failed else finish_tracking_stage
    record(production.registry, summary.mlflow_run_id, summary, failed=failed)
    link = mlflow_run_link(settings.resolved_tracking_uri,
                           production.registry.experiment_id(), summary.mlflow_run_id)
    create_markdown_artifact(key="retrain-summary",
                             markdown=f"{summary.to_markdown()}\n\nMLflow run: {link}\n",
                             description=f"{summary.outcome}: {summary.decision_reason}"[:500])
    return summary
