from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import load_corpus
from embedloop.faults import crash_point
from embedloop.ledger import Ledger, commit_ledger, load_ledger, save_batch, save_guard_set
from embedloop.logs import Cursor, NewRows, discover_log_files, read_new_rows
from tasks._stage import io_stage


@io_stage(name="load corpus")
def load_corpus_stage(settings: Settings) -> pd.DataFrame:
    corpus = load_corpus(settings.corpus)
    get_run_logger().info("corpus %s: %d documents", settings.corpus, len(corpus))
    return corpus


@io_stage(name="ingest logs")
def ingest_logs(settings: Settings) -> tuple[NewRows, Ledger]:
    """Rows that arrived since the last committed run (the ledger is not moved here)."""
    ledger = load_ledger(settings.state_dir)
    files = discover_log_files(settings.logs)
    new = read_new_rows(files, ledger.cursors, settings.column_map)
    logger = get_run_logger()
    logger.info("ingested %d new rows from %d of %d files", len(new.frame), len(new.cursors),
                len(files))
    for note in new.notes:
        logger.warning(note)
    for name, why in new.unreadable.items():
        logger.warning("%s: skipped, %s; it is not read again until it changes", name, why)
    crash_point("ingest")  # rows read, nothing recorded yet
    return new, ledger


@io_stage(name="commit batch")
def commit_batch_stage(settings: Settings, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, accepted: pd.DataFrame, quarantined: pd.DataFrame,
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
