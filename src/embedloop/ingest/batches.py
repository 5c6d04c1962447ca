"""A run's batch of log rows: stored and the ledger moved past it (the run's last step),
or rejected before training; and the time window its logs cover."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from embedloop.errors import BatchRejected
from embedloop.faults import crash_point
from embedloop.ingest.ledger import (
    Ledger,
    batch_dir,
    commit_ledger,
    save_batch,
    save_guard_set,
)
from embedloop.ingest.logs import Cursor
from embedloop.ingest.validation import (
    ACCEPTED_SCHEMA,
    QUARANTINE_SCHEMA,
    BatchVerdict,
    LogValidation,
    quarantine_whole_batch,
    write_rows,
)


def commit_batch(state_dir: Path, ledger: Ledger, cursors: dict[str, Cursor], batch_id: str,
                 accepted: pd.DataFrame | Path, quarantined: pd.DataFrame | Path,
                 freeze_guard: dict[str, dict[str, float]] | None = None) -> Ledger:
    """Store the batch's rows, then move the ledger past them in one atomic write: the
    run's last step, so a run that fails earlier leaves its rows to be read again.
    `freeze_guard`: the first judged run's pool queries, kept as the fixed guard set
    that every later run re-checks."""
    if freeze_guard:
        save_guard_set(state_dir, freeze_guard, batch_id)
    save_batch(state_dir, batch_id, accepted, quarantined)
    crash_point("commit")  # the batch's files written, the ledger not yet moved
    return commit_ledger(state_dir, ledger, cursors, batch_id)


def reject_batch(state_dir: Path, ledger: Ledger, cursors: dict[str, Cursor], batch_id: str,
                 result: LogValidation, verdict: BatchVerdict, max_quarantine_share: float,
                 work_dir: Path, commit: Callable[..., Ledger] = commit_batch) -> BatchRejected:
    """Stop before training, saying why (the error to raise). A mostly broken batch (a
    broken tracker) is kept whole in quarantine and the ledger moves past it (`commit`:
    `commit_batch`, or the pipeline's retried stage of it), so the next run is not
    blocked by the same rows; any other failed check leaves the rows unread, for the next
    run."""
    why = "; ".join(verdict.problems)
    if result.quarantined_share > max_quarantine_share:
        work_dir.mkdir(parents=True, exist_ok=True)
        kept = work_dir / "rejected.parquet"
        total = write_rows(quarantine_whole_batch(result, why), kept, QUARANTINE_SCHEMA)
        assert total == result.input_rows, f"row accounting broke: {total} != {result.input_rows}"
        commit(state_dir, ledger, cursors, batch_id, ACCEPTED_SCHEMA.empty_table().to_pandas(),
               kept)
        where = batch_dir(state_dir, batch_id) / "quarantine.parquet"
        return BatchRejected(f"batch rejected before training: {why}. All "
                             f"{result.input_rows} rows are kept in {where}")
    return BatchRejected(f"batch not trained on yet: {why}. Its rows stay unread and are "
                         f"read again, with newer ones, by the next run")


def batch_end(batch: pd.DataFrame) -> str:
    """The latest log timestamp of a run's batch: sessions served after anything this run
    starts are logged later than this."""
    return str(pd.to_datetime(batch["ts"], utc=True).max()) if len(batch) else ""


def batch_window(batch: pd.DataFrame) -> tuple[str, str]:
    """The first and last log timestamps of a run's batch (ISO strings)."""
    ts = pd.to_datetime(batch["ts"], utc=True)
    return (str(ts.min()), str(ts.max())) if len(batch) else ("", "")
