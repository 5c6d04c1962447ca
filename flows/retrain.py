"""The retrain flow: the README's diagram, one task per stage.

    ingest -> validate -> users' evidence (watch: roll back? canaries: promote?)
        -> learn (pairs, hard negatives, fine-tune) -> judge (evaluate, judge offline,
        register) -> ship: promote (credibly better) | canary (no harm: users decide) | keep

The judge (embedloop.judge) decides from typed evidence: offline evidence on the
evaluation pool (queries never trained on) screens for harm, and interleaved sessions of
users decide. Production (the `champion` alias and the live index) changes only at a
commit point: the watch's rollback, a canary's promotion, or `publish_stage` after the
candidate has been registered; every failure before one leaves both exactly as they
were, and the ledger is committed last, so rows are read again by the next run rather
than lost. Each stage returns a typed result; the run's summary is made from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State

from embedloop.config import Settings, load_settings
from embedloop.errors import BatchRejected, RecordingFailed, Refused
from embedloop.flows.alerts import notify_failure, refused, send_alert
from embedloop.index.base import VectorIndex
from embedloop.index.build import CorpusIndexer
from embedloop.ingest.batches import batch_end, batch_window
from embedloop.ingest.ledger import load_accepted_history, load_guard_set
from embedloop.ingest.logs import discover_log_files
from embedloop.ingest.validation import LogValidation
from embedloop.judge.evidence import Source
from embedloop.judge.policy import Action, Judgement, Policy, UsersEvidence
from embedloop.learn.pairs import TrainingData
from embedloop.learn.recipe import Recipe
from embedloop.learn.training import FineTuneResult
from embedloop.models.encoding import Runtime, choose_runtime
from embedloop.production.champion import Champion, Production
from embedloop.production.lock import exclusive
from embedloop.production.registry import CHAMPION
from embedloop.report.summary import (
    JudgedAgainst,
    Registered,
    RunStart,
    RunSummary,
    Shipped,
    StageResults,
    summarize,
)
from embedloop.report.tracking import finish_tracking, mlflow_run_link
from embedloop.search.retrieval import Retriever
from embedloop.tasks._encode import corpus_indexer
from embedloop.tasks._stage import stage_clock
from embedloop.tasks.canary import judge_users_stage, start_canary_stage
from embedloop.tasks.evaluate import (
    candidate_stage,
    evaluate_stage,
    fusion_weight_stage,
    incumbent_stage,
    judge_offline_stage,
)
from embedloop.tasks.ingest import (
    commit_batch_stage,
    commit_cursors_stage,
    ingest_and_validate_logs,
    load_corpus_stage,
)
from embedloop.tasks.publish import ensure_champion_stage, publish_stage, register_stage
from embedloop.tasks.tracking import (
    finish_tracking_stage,
    log_evaluation_stage,
    log_training_stage,
    log_users_stage,
    log_validation_stage,
    start_tracking_stage,
)
from embedloop.tasks.train import build_pairs_stage, fine_tune_stage, mine_negatives_stage
from embedloop.tasks.validate import check_batch_stage, reject_batch_stage


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
    s = settings
    runtime = choose_runtime(s.encode_precision, s.encode_backend)
    production = Production.from_settings(s)
    discover_log_files(s.logs)  # a wrong path fails now, not after the bootstrap
    corpus = load_corpus_stage(s.corpus)
    indexer = corpus_indexer(s, production.store, corpus, runtime.encoder)
    champion = ensure_champion_stage(production, s.resolved_base_model, indexer,
                                     runtime.device, s.max_seq_length)
    run_id = start_tracking_stage(production.registry, s, trigger, reason, champion.version,
                                  str(flow_run.id or ""), runtime)
    start = RunStart(trigger, reason, champion.version, run_id)
    batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
    work_dir = _fresh_work_dir(s.state_dir, batch_id)
    done = StageResults()  # what the stages returned, in order: the summary's source
    try:
        new, validation, ledger = ingest_and_validate_logs(
            s.logs, s.state_dir, s.column_map, corpus, work_dir / "rows",
            max_query_chars=s.max_query_chars, max_position=s.max_position)
        done.keep(new)
        if not new.rows:
            if new.cursors:  # empty or unreadable files: remembered, not tried nightly
                commit_cursors_stage(s.state_dir, ledger, new.cursors)
            return _finish(s, production, start, done, seconds, "no-new-data",
                           "no new interaction rows since the last run; the champion and "
                           "the live index are unchanged")
        done.keep(validation)
        verdict = check_batch_stage(validation, s.max_quarantine_share, s.min_clicks)
        log_validation_stage(production.registry, run_id, validation, verdict.outcome)
        if not verdict.ok:
            reject_batch_stage(s.state_dir, ledger, new.cursors, batch_id, validation, verdict,
                               s.max_quarantine_share, work_dir, commit=commit_batch_stage)

        # Users' evidence first: a watched champion they like less is rolled back, a
        # canary they prefer is promoted; either way this batch trains from what is live.
        history = load_accepted_history(s.state_dir, ledger)
        users = done.keep(judge_users_stage(production, Policy.from_settings(s), s.state_dir,
                                            champion.version, validation.accepted, history,
                                            s.holdout_fraction))
        log_users_stage(production.registry, run_id, users)
        if users.rolled_back:
            alert_rollback(s.model_name, users)
        if users.promoted or users.rolled_back:
            champion = production.champion() or champion

        guard_qrels = load_guard_set(s.state_dir)
        done.keep(JudgedAgainst(champion.version))
        learned = learn(s, production, champion, indexer, runtime, validation, history,
                        guard_qrels, work_dir, run_id, done)
        judged = judge(s, production, champion, learned, indexer, guard_qrels, run_id,
                       batch_id, done)
        shipped = done.keep(ship(s, production, judged, users, indexer.corpus,
                                 validation.accepted))

        first_pool = dict(sorted(learned.data.eval_qrels.items())[: s.guard_queries])
        assert validation.accepted_file and validation.quarantine_file
        commit_batch_stage(s.state_dir, ledger, new.cursors, batch_id,
                           validation.accepted_file, validation.quarantine_file,
                           freeze_guard=first_pool if guard_qrels is None else None)
        return _finish(s, production, start, done, seconds,
                       *_outcome(users, judged.version, shipped))
    except BaseException as exc:
        _failed(s, production, start, done, seconds, exc)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@dataclass(frozen=True)
class Learned:
    """What the learn phase hands on: the pairs (and pool), the fine-tune, and the
    champion searching its index (the candidate's opponent)."""

    data: TrainingData
    tuned: FineTuneResult
    incumbent: Retriever


def learn(settings: Settings, production: Production, champion: Champion,
          indexer: CorpusIndexer, runtime: Runtime, validation: LogValidation,
          history: pd.DataFrame | None, guard_qrels: dict[str, dict[str, float]] | None,
          work_dir: Path, run_id: str, done: StageResults) -> Learned:
    """Pairs from the batch, negatives mined by the champion, the fine-tune (the recipe)."""
    recipe = Recipe.from_settings(settings)
    data = done.keep(build_pairs_stage(recipe, validation.accepted, indexer.corpus,
                                       set(guard_qrels) if guard_qrels else None, history))
    incumbent, note = incumbent_stage(production, champion, indexer, runtime.device,
                                      settings.max_seq_length, settings.encode_batch_size)
    production.notes += [note] if note else []  # the summary's notes, in the order found
    negatives = None
    if recipe.mine_negatives:
        data, negatives = mine_negatives_stage(recipe, data, incumbent, indexer.corpus)
        done.keep(data)
        done.keep(negatives)
    tuned = done.keep(fine_tune_stage.with_options(timeout_seconds=settings.train_timeout_s)(
        recipe, champion.model_path, data, work_dir, runtime.device, incumbent.index))
    log_training_stage(production.registry, run_id, data, tuned, negatives,
                       batch_window(validation.accepted), settings.logs)
    return Learned(data, tuned, incumbent)


@dataclass(frozen=True)
class Judged:
    """The registered candidate, its judgement, and the index it searched."""

    version: str
    judgement: Judgement
    index: VectorIndex


def judge(settings: Settings, production: Production, champion: Champion, learned: Learned,
          indexer: CorpusIndexer, guard_qrels: dict[str, dict[str, float]] | None,
          run_id: str, batch_id: str, done: StageResults) -> Judged:
    """The candidate beside the incumbent on the same queries, judged, and registered."""
    candidate = candidate_stage(learned.tuned, indexer, learned.incumbent,
                                settings.encode_batch_size)
    fusion = None
    if candidate.index.lexical is not None and settings.fusion_weights:
        candidate, fusion = fusion_weight_stage(
            candidate, learned.incumbent, settings.fusion_weights, learned.data,
            settings.min_holdout_queries, settings.harm_alpha, settings.primary_metric)
        done.keep(fusion)
    evaluation = done.keep(evaluate_stage(candidate, learned.incumbent, learned.data,
                                          guard_qrels, settings.judged_queries, indexer.corpus,
                                          settings.primary_metric, settings.encode_batch_size))
    judgement = done.keep(judge_offline_stage(Policy.from_settings(settings),
                                              settings.state_dir, evaluation, run_id))
    log_evaluation_stage(production.registry, run_id, evaluation, judgement, fusion)
    version = done.keep(Registered(register_stage(
        production, run_id, learned.tuned, champion, judgement, batch_id,
        len(learned.data.pairs), settings.primary_metric,
        candidate.index.lexical.fusion.weight if candidate.index.lexical else None))).version
    return Judged(version, judgement, candidate.index)


def ship(settings: Settings, production: Production, judged: Judged, users: UsersEvidence,
         corpus: pd.DataFrame, batch: pd.DataFrame) -> Shipped:
    """Promotion (the commit point: champion and index move), or a canary, or nothing:
    production stays as it is and the registered candidate says why."""
    judgement = judged.judgement
    if judgement.action == Action.PROMOTE:
        return Shipped(judgement, publish_stage(production, judged.index, judged.version,
                                                corpus, batch_end(batch)))
    started, why = start_canary_stage(
        production, Policy.from_settings(settings), judgement, users, judged.index,
        judged.version, corpus, batch, settings.canary_slots,
        min(settings.canary_share, settings.holdout_fraction))
    if why:
        judgement = dataclasses.replace(judgement, reason=f"{judgement.reason}; canary: {why}")
    return Shipped(judgement, None, judged.version if started else None)


def _fresh_work_dir(state_dir: Path, batch_id: str) -> Path:
    """The run's scratch space (staged rows, checkpoints), removed however the run ends;
    under the lock, what a killed run left there is no one's and goes too."""
    shutil.rmtree(state_dir / "work", ignore_errors=True)
    return state_dir / "work" / batch_id


def _outcome(users: UsersEvidence, candidate: str, shipped: Shipped) -> tuple[str, str]:
    """The run's outcome and why, users' evidence first, then this run's candidate."""
    parts = [f"{c.source} v{c.challenger}: {c.judgement.action}: {c.judgement.reason}"
             for c in users.comparisons if c.judgement.action != Action.CONTINUE]
    parts.append(f"candidate v{candidate}: {shipped.judgement.action}: "
                 f"{shipped.judgement.reason}")
    if shipped.promoted_index or users.promoted:
        outcome = "promoted"
    elif users.rolled_back:
        outcome = "rolled back"
    else:
        outcome = "kept"
    return outcome, " | ".join(parts)


def alert_rollback(model_name: str, users: UsersEvidence) -> None:
    """One alert when the watch rolls a champion back: production changed by itself."""
    rolled = users.rolled_back
    assert rolled is not None
    watch = next(c for c in users.comparisons if c.source == Source.WATCH)
    send_alert({"text": f"embedloop: the watch rolled champion v{rolled.rolled_back} back to "
                        f"v{rolled.champion} (live index {rolled.live_index}): "
                        f"{watch.judgement.reason}",
                "event": "watch rollback", "model": model_name,
                "rolled_back": rolled.rolled_back, "champion": rolled.champion,
                "live_index": rolled.live_index, "reason": watch.judgement.reason})


def _failed(settings: Settings, production: Production, start: RunStart,
            done: StageResults, seconds: dict[str, float], exc: BaseException) -> None:
    """A failed run's summary, recorded as far as the run got; past the commit point, the
    error says the promotion is complete."""
    outcome = "rejected" if isinstance(exc, BatchRejected) else "failed"
    with contextlib.suppress(Exception):
        _finish(settings, production, start, done, seconds, outcome,
                f"{type(exc).__name__}: {exc}", failed=True)
    shipped, registered = done.latest(Shipped), done.latest(Registered)
    if shipped and shipped.promoted_index and registered and isinstance(exc, Exception):
        # Production did change. Say so, or on-call would roll back a promotion that
        # worked because its bookkeeping did not.
        raise RecordingFailed(
            f"the promotion is complete (champion v{registered.version}, live "
            f"index {shipped.promoted_index}), but recording this run failed: "
            f"{type(exc).__name__}: {exc}") from exc


def _finish(settings: Settings, production: Production, start: RunStart,
            done: StageResults, seconds: dict[str, float], outcome: str, why: str,
            failed: bool = False) -> RunSummary:
    """The summary, from the stages' results, to MLflow and to the Prefect UI."""
    summary = summarize(start, done, outcome, why,
                        champion=production.registry.version_for_alias(CHAMPION),
                        live_index=production.store.live_version(), stage_seconds=seconds,
                        notes=production.notes)
    # A failed run is recorded once, at once: retrying a tracking server that may be the
    # cause would only delay the alert and the exit.
    record = finish_tracking if failed else finish_tracking_stage
    record(production.registry, start.mlflow_run_id, summary, failed=failed)
    link = mlflow_run_link(settings.resolved_tracking_uri,
                           production.registry.experiment_id(), start.mlflow_run_id)
    create_markdown_artifact(key="retrain-summary",
                             markdown=f"{summary.to_markdown()}\n\nMLflow run: {link}\n",
                             description=f"{summary.outcome}: {summary.decision_reason}"[:500])
    return summary
