from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import load_corpus
from embedloop.ledger import Ledger, load_ledger
from embedloop.logs import NewRows, discover_log_files, read_new_rows
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
    return new, ledger
