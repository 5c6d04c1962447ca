"""Validate: whether the batch can be trained on, and, when it cannot, the batch stopped
with the reason (embedloop.ingest.validation, embedloop.ingest.batches)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from embedloop.ingest.batches import reject_batch
from embedloop.ingest.ledger import Ledger
from embedloop.ingest.logs import Cursor
from embedloop.ingest.validation import BatchVerdict, LogValidation, check_batch
from embedloop.tasks._stage import stage


@stage(name="check batch")
def check_batch_stage(result: LogValidation, max_quarantine_share: float,
                      min_clicks: int) -> BatchVerdict:
    return check_batch(result, max_quarantine_share=max_quarantine_share, min_clicks=min_clicks)


@stage(name="reject batch")
def reject_batch_stage(state_dir: Path, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, result: LogValidation, verdict: BatchVerdict,
                       max_quarantine_share: float, work_dir: Path,
                       commit: Callable[..., Ledger]) -> None:
    """Stop before training, saying why (embedloop.ingest.batches.reject_batch). `commit`:
    the flow's commit stage, retried as any commit of a batch is."""
    raise reject_batch(state_dir, ledger, cursors, batch_id, result, verdict,
                       max_quarantine_share, work_dir, commit)
