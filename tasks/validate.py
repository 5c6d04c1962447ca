from __future__ import annotations

import functools

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.errors import BatchRejected
from embedloop.faults import crash_point
from embedloop.ledger import Ledger, seen_event_ids
from embedloop.logs import Cursor
from embedloop.validation import (
    BatchVerdict,
    LogValidation,
    check_batch,
    quarantine_whole_batch,
    validate_logs,
)
from tasks._stage import stage
from tasks.ingest import commit_batch_stage


@stage(name="validate logs")
def validate_logs_stage(settings: Settings, raw: pd.DataFrame, corpus: pd.DataFrame,
                        ledger: Ledger) -> LogValidation:
    seen = functools.partial(seen_event_ids, settings.state_dir, ledger)
    result = validate_logs(raw, set(corpus["doc_id"]), seen,
                           max_query_chars=settings.max_query_chars,
                           max_position=settings.max_position)
    get_run_logger().info("validated %d rows: %d accepted, %d quarantined %s",
                          result.input_rows, len(result.accepted), len(result.quarantined),
                          result.reason_counts)
    crash_point("validate")  # rows judged, nothing recorded yet
    return result


@stage(name="check batch")
def check_batch_stage(settings: Settings, result: LogValidation) -> BatchVerdict:
    return check_batch(result, max_quarantine_share=settings.max_quarantine_share,
                       min_clicks=settings.min_clicks)


@stage(name="reject batch")
def reject_batch_stage(settings: Settings, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, result: LogValidation, verdict: BatchVerdict) -> None:
    """Stop before training, saying why. A mostly broken batch (a broken tracker) is kept
    whole in quarantine and the ledger moves past it, so the next run is not blocked by
    the same rows; any other failed check leaves the rows unread, for the next run."""
    why = "; ".join(verdict.problems)
    if result.quarantined_share > settings.max_quarantine_share:
        commit_batch_stage(settings, ledger, cursors, batch_id, result.accepted.iloc[0:0],
                           quarantine_whole_batch(result, why))
        where = settings.state_dir / "batches" / batch_id / "quarantine.parquet"
        raise BatchRejected(f"batch rejected before training: {why}. All "
                            f"{result.input_rows} rows are kept in {where}")
    raise BatchRejected(f"batch not trained on yet: {why}. Its rows stay unread and are "
                        f"read again, with newer ones, by the next run")
