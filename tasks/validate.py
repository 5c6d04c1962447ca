from __future__ import annotations

import functools

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.ledger import Ledger, seen_event_ids
from embedloop.validation import BatchVerdict, LogValidation, check_batch, validate_logs
from tasks._stage import stage


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
    return result


@stage(name="check batch")
def check_batch_stage(settings: Settings, result: LogValidation) -> BatchVerdict:
    return check_batch(result, max_quarantine_share=settings.max_quarantine_share,
                       min_clicks=settings.min_clicks)
