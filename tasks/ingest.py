from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import load_corpus
from embedloop.faults import crash_point
from embedloop.ledger import (
    Ledger,
    commit_ledger,
    load_ledger,
    save_batch,
    save_guard_set,
    seen_event_ids,
)
from embedloop.logs import CHUNK_ROWS, Cursor, Ingested, discover_log_files, iter_new_rows
from embedloop.validation import LogValidation, validate_in_chunks
from tasks._stage import io_stage


@io_stage(name="load corpus")
def load_corpus_stage(settings: Settings) -> pd.DataFrame:
    corpus = load_corpus(settings.corpus)
    get_run_logger().info("corpus %s: %d documents", settings.corpus, len(corpus))
    return corpus


@io_stage(name="ingest and validate logs")
def ingest_and_validate_logs(settings: Settings, corpus: pd.DataFrame,
                             staging: Path) -> tuple[Ingested, LogValidation, Ledger]:
    """Rows that arrived since the last committed run, read and validated chunk by chunk
    (memory does not grow with the batch): accepted and quarantined rows go to Parquet
    files in `staging`, which `commit_batch_stage` moves into the batch. The ledger is
    not moved here."""
    ledger = load_ledger(settings.state_dir)
    files = discover_log_files(settings.logs)
    logger = get_run_logger()
    got = Ingested()

    def chunks() -> Iterator[pd.DataFrame]:
        yield from got.frames(iter_new_rows(files, ledger.cursors, settings.column_map))
        crash_point("ingest")  # rows read, nothing recorded yet

    def progress(rows: int, accepted: int, quarantined: int) -> None:
        if rows > CHUNK_ROWS:  # a batch bigger than a chunk: say how far it got
            logger.info("read and validated %d rows so far: %d accepted, %d quarantined",
                        rows, accepted, quarantined)

    validation = validate_in_chunks(
        chunks(), set(corpus["doc_id"]), functools.partial(seen_event_ids, settings.state_dir,
                                                           ledger),
        staging, max_query_chars=settings.max_query_chars, max_position=settings.max_position,
        progress=progress)
    logger.info("ingested %d new rows from %d of %d files", got.rows, len(got.cursors),
                len(files))
    for note in got.notes:
        logger.warning(note)
    for name, why in got.unreadable.items():
        logger.warning("%s: skipped, %s; it is not read again until it changes", name, why)
    logger.info("validated %d rows: %d accepted, %d quarantined %s", validation.input_rows,
                validation.accepted_count, validation.quarantined_count,
                validation.reason_counts)
    crash_point("validate")  # rows judged, nothing recorded yet
    return got, validation, ledger


@io_stage(name="commit batch")
def commit_batch_stage(settings: Settings, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, accepted: pd.DataFrame | Path,
                       quarantined: pd.DataFrame | Path,
                       freeze_guard: dict[str, dict[str, float]] | None = None) -> Ledger:
    """Store the batch's rows, then move the ledger past them in one atomic write: the
    run's last step, so a run that fails earlier leaves its rows to be read again.
    `freeze_guard`: the first judged run's pool queries, kept as the fixed guard set
    that every later run re-checks."""
    if freeze_guard:
        save_guard_set(settings.state_dir, freeze_guard, batch_id)
    save_batch(settings.state_dir, batch_id, accepted, quarantined)
    crash_point("commit")  # the batch's files written, the ledger not yet moved
    return commit_ledger(settings.state_dir, ledger, cursors, batch_id)


@io_stage(name="remember skipped files")
def commit_cursors_stage(settings: Settings, ledger: Ledger,
                         cursors: dict[str, Cursor]) -> Ledger:
    """A run with no new rows still remembers the empty and unreadable files it saw."""
    return commit_ledger(settings.state_dir, ledger, cursors, None)
