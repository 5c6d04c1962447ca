from __future__ import annotations

from pathlib import Path

from embedloop.config import Settings
from embedloop.errors import BatchRejected
from embedloop.ledger import Ledger, batch_dir
from embedloop.logs import Cursor
from embedloop.validation import (
    ACCEPTED_SCHEMA,
    QUARANTINE_SCHEMA,
    BatchVerdict,
    LogValidation,
    check_batch,
    quarantine_whole_batch,
    write_rows,
)
from tasks._stage import stage
from tasks.ingest import commit_batch_stage


@stage(name="check batch")
def check_batch_stage(settings: Settings, result: LogValidation) -> BatchVerdict:
    return check_batch(result, max_quarantine_share=settings.max_quarantine_share,
                       min_clicks=settings.min_clicks)


@stage(name="reject batch")
def reject_batch_stage(settings: Settings, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, result: LogValidation, verdict: BatchVerdict,
                       work_dir: Path) -> None:
    """Stop before training, saying why. A mostly broken batch (a broken tracker) is kept
    whole in quarantine and the ledger moves past it, so the next run is not blocked by
    the same rows; any other failed check leaves the rows unread, for the next run."""
    why = "; ".join(verdict.problems)
    if result.quarantined_share > settings.max_quarantine_share:
        work_dir.mkdir(parents=True, exist_ok=True)
        kept = work_dir / "rejected.parquet"
        total = write_rows(quarantine_whole_batch(result, why), kept, QUARANTINE_SCHEMA)
        assert total == result.input_rows, f"row accounting broke: {total} != {result.input_rows}"
        commit_batch_stage(settings, ledger, cursors, batch_id,
                           ACCEPTED_SCHEMA.empty_table().to_pandas(), kept)
        where = batch_dir(settings.state_dir, batch_id) / "quarantine.parquet"
        raise BatchRejected(f"batch rejected before training: {why}. All "
                            f"{result.input_rows} rows are kept in {where}")
    raise BatchRejected(f"batch not trained on yet: {why}. Its rows stay unread and are "
                        f"read again, with newer ones, by the next run")
