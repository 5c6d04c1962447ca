"""What earlier runs consumed, committed atomically at the end of a run.

The ledger holds a cursor per log file and the list of committed batches. Only
batches listed here count: an accepted-rows file left behind by a crashed run is
ignored, so a crash never loses rows or ingests them twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow.parquet as pq

from embedloop.ingest.logs import Cursor


@dataclass
class Ledger:
    cursors: dict[str, Cursor] = field(default_factory=dict)
    batches: list[str] = field(default_factory=list)  # committed batch ids, oldest first


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_ledger(state_dir: Path) -> Ledger:
    path = state_dir / "ledger.json"
    if not path.exists():
        return Ledger()
    data: dict[str, Any] = json.loads(path.read_text())
    return Ledger(cursors={k: Cursor.from_json(v) for k, v in data["cursors"].items()},
                  batches=list(data["batches"]))


def batch_dir(state_dir: Path, batch_id: str) -> Path:
    return state_dir / "batches" / batch_id


def save_batch(state_dir: Path, batch_id: str, accepted: pd.DataFrame | Path,
               quarantined: pd.DataFrame | Path) -> Path:
    """Store a batch's rows (frames are written; files, as validation wrote them, are
    moved in) and index its accepted event ids. Invisible until `commit_ledger` lists
    the batch."""
    directory = batch_dir(state_dir, batch_id)
    directory.mkdir(parents=True, exist_ok=True)
    for rows, name in ((accepted, "accepted.parquet"), (quarantined, "quarantine.parquet")):
        if isinstance(rows, Path):
            os.replace(rows, directory / name)
        else:
            rows.to_parquet(directory / name, index=False)
    _record_accepted_ids(state_dir, batch_id, directory / "accepted.parquet")
    return directory


def commit_ledger(state_dir: Path, ledger: Ledger, new_cursors: dict[str, Cursor],
                  batch_id: str | None) -> Ledger:
    cursors = {**ledger.cursors, **new_cursors}
    batches = ledger.batches + ([batch_id] if batch_id else [])
    data = {"cursors": {k: c.to_json() for k, c in sorted(cursors.items())}, "batches": batches}
    atomic_write_text(state_dir / "ledger.json", json.dumps(data, indent=1))
    return Ledger(cursors=cursors, batches=batches)


SEEN_DB = "event_ids.sqlite"


def _seen_db(state_dir: Path) -> sqlite3.Connection:
    """Every accepted event id with the batch that accepted it, keyed for lookup, so the
    duplicate check costs in proportion to the new rows, not to the history."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / SEEN_DB)
    db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, batch TEXT) "
               "WITHOUT ROWID")
    db.execute("CREATE TABLE IF NOT EXISTS indexed (batch TEXT PRIMARY KEY)")
    return db


def _json_array(values: Iterable[str]) -> str:
    """Values for SQLite's json_each: one statement for a million ids, instead of a
    Python round trip per row."""
    return orjson.dumps(list(values)).decode()


def _index_batch(db: sqlite3.Connection, batch_id: str,
                 event_ids: Iterable[Iterable[str]]) -> None:
    """`event_ids` in parts (a million ids a part keeps a 10M-row batch in bounded
    memory)."""
    with db:  # one transaction; a crash leaves the batch wholly in or wholly out
        for part in event_ids:
            # REPLACE: rows of a batch that never committed (a crash) are accepted again
            # under the next batch's id; only committed batches count in a lookup. Sorted,
            # B-tree inserts stay local: 10x faster for a million ids.
            db.execute("INSERT OR REPLACE INTO seen SELECT value, ? FROM json_each(?) "
                       "ORDER BY value", (batch_id, _json_array(part)))
        db.execute("INSERT OR IGNORE INTO indexed VALUES (?)", (batch_id,))


def _accepted_ids(path: Path) -> Iterable[list[str]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1_000_000,
                                                   columns=["event_id"]):
        yield [str(i) for i in batch.column(0).to_pylist()]


def _record_accepted_ids(state_dir: Path, batch_id: str, accepted: Path) -> None:
    db = _seen_db(state_dir)
    try:
        _index_batch(db, batch_id, _accepted_ids(accepted))
    finally:
        db.close()


def seen_event_ids(state_dir: Path, ledger: Ledger, candidates: Iterable[str]) -> set[str]:
    """The candidates that a committed batch already accepted."""
    if not ledger.batches:
        return set()
    db = _seen_db(state_dir)
    try:
        indexed = {b for (b,) in db.execute("SELECT batch FROM indexed")}
        for batch in ledger.batches:  # committed before this index existed: add them once
            path = batch_dir(state_dir, batch) / "accepted.parquet"
            if batch not in indexed and path.exists():
                _index_batch(db, batch, _accepted_ids(path))
        return {e for (e,) in db.execute(
            "SELECT s.event_id FROM (SELECT DISTINCT value AS event_id FROM json_each(?) "
            "ORDER BY value) c JOIN seen s ON s.event_id = c.event_id "
            "WHERE s.batch IN (SELECT value FROM json_each(?))",
            (_json_array(candidates), _json_array(ledger.batches)))}
    finally:
        db.close()


def load_guard_set(state_dir: Path) -> dict[str, dict[str, float]] | None:
    """The fixed queries every later run re-checks (None until the first run sets them)."""
    path = state_dir / "guard.json"
    return json.loads(path.read_text())["qrels"] if path.exists() else None


def save_guard_set(state_dir: Path, qrels: dict[str, dict[str, float]], batch_id: str) -> None:
    atomic_write_text(state_dir / "guard.json",
                      json.dumps({"batch": batch_id, "qrels": qrels}, indent=1))


def load_accepted_history(state_dir: Path, ledger: Ledger) -> pd.DataFrame | None:
    """Every committed batch's accepted rows: click-model evidence and replay material."""
    frames = [pd.read_parquet(batch_dir(state_dir, b) / "accepted.parquet")
              for b in ledger.batches
              if (batch_dir(state_dir, b) / "accepted.parquet").exists()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


class EvidenceLedger:
    """The judge's record (judge.EvidenceLog): every reading it made, per candidate and
    source, in `evidence.json`. Each entry is written before the judgement is acted on."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "evidence.json"

    def read(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def record(self, candidate: str, source: str, entry: dict[str, Any]) -> int:
        record = self.read()
        readings = record.setdefault(candidate, {}).setdefault(source, [])
        readings.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry})
        atomic_write_text(self.path, json.dumps(record, indent=1, sort_keys=True))
        return len(readings)

    def latest(self, candidate: str, source: str) -> dict[str, Any] | None:
        readings = self.read().get(candidate, {}).get(source, [])
        return readings[-1] if readings else None
