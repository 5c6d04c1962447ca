"""The ledger: the index of accepted event ids (what counts as seen is what a committed
batch accepted). The judge's record is tested with the judge (test_judge.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from embedloop.ingest.ledger import (
    SEEN_DB,
    commit_ledger,
    load_ledger,
    save_batch,
    seen_event_ids,
)


def accept(state: Path, batch: str, ids: list[str], *, commit: bool = True) -> None:
    accepted = pd.DataFrame({"event_id": ids})
    save_batch(state, batch, accepted, pd.DataFrame({"event_id": []}))
    if commit:
        commit_ledger(state, load_ledger(state), {}, batch)


def test_only_committed_batches_count_and_a_crashed_one_is_taken_over(tmp_path: Path) -> None:
    accept(tmp_path, "b1", ["e1", "e2"])
    accept(tmp_path, "b2", ["e3"], commit=False)  # killed before the ledger moved
    ledger = load_ledger(tmp_path)
    assert seen_event_ids(tmp_path, ledger, ["e1", "e3", "e9"]) == {"e1"}
    accept(tmp_path, "b3", ["e3"])  # the next run accepts the same rows
    assert seen_event_ids(tmp_path, load_ledger(tmp_path), ["e1", "e3"]) == {"e1", "e3"}


def test_batches_committed_before_the_index_existed_are_added_once(tmp_path: Path) -> None:
    accept(tmp_path, "b1", ["e1", "e2"])
    (tmp_path / SEEN_DB).unlink()  # a state directory from an older embedloop
    assert seen_event_ids(tmp_path, load_ledger(tmp_path), ["e2", "e5"]) == {"e2"}
    assert (tmp_path / SEEN_DB).exists()
