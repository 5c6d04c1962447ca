"""Ingest: the corpus, and the log rows that arrived since the last committed run, read and
validated; at the run's end, the batch committed (embedloop.ingest)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.faults import crash_point
from embedloop.ingest.batches import commit_batch
from embedloop.ingest.corpus import load_corpus
from embedloop.ingest.ledger import Ledger, commit_ledger, load_ledger, seen_event_ids
from embedloop.ingest.logs import CHUNK_ROWS, Cursor, Ingested, discover_log_files, iter_new_rows
from embedloop.ingest.validation import LogValidation, validate_in_chunks
from embedloop.tasks._stage import io_stage


@io_stage(name="load corpus")
def load_corpus_stage(source: str) -> pd.DataFrame:
    corpus = load_corpus(source)
    get_run_logger().info("corpus %s: %d documents", source, len(corpus))
    return corpus


@io_stage(name="ingest and validate logs")
def ingest_and_validate_logs(logs: str, state_dir: Path, column_map: dict[str, str],
                             corpus: pd.DataFrame, staging: Path, *, max_query_chars: int,
                             max_position: int) -> tuple[Ingested, LogValidation, Ledger]:
    """Rows that arrived since the last committed run, read and validated chunk by chunk
    (memory does not grow with the batch): accepted and quarantined rows go to Parquet
    files in `staging`, which `commit_batch_stage` moves into the batch. The ledger is
    not moved here."""
    ledger = load_ledger(state_dir)
    files = discover_log_files(logs)
    logger = get_run_logger()
    got = Ingested()

    def chunks() -> Iterator[pd.DataFrame]:
        yield from got.frames(iter_new_rows(files, ledger.cursors, column_map))
        crash_point("ingest")  # rows read, nothing recorded yet

    def progress(rows: int, accepted: int, quarantined: int) -> None:
        if rows > CHUNK_ROWS:  # a batch bigger than a chunk: say how far it got
            logger.info("read and validated %d rows so far: %d accepted, %d quarantined",
                        rows, accepted, quarantined)

    validation = validate_in_chunks(
        chunks(), set(corpus["doc_id"]), functools.partial(seen_event_ids, state_dir, ledger),
        staging, max_query_chars=max_query_chars, max_position=max_position,
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


commit_batch_stage = io_stage(name="commit batch")(commit_batch)


@io_stage(name="remember skipped files")
def commit_cursors_stage(state_dir: Path, ledger: Ledger, cursors: dict[str, Cursor]) -> Ledger:
    """A run with no new rows still remembers the empty and unreadable files it saw."""
    return commit_ledger(state_dir, ledger, cursors, None)
