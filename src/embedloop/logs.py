"""The interaction-log contract, its readers, and the ledger of what was read.

One row per shown result (see `LOG_FIELDS`). Readers never drop a row: a line
that is not even JSON still becomes a row, with `parse_error` set, so that
validation can quarantine it with a reason and the counts add up.

Incremental reading: a `Cursor` per file records how much of it earlier runs
consumed (bytes for NDJSON, data rows for CSV, all-or-nothing for Parquet) and
a fingerprint of its head, so appended rows are read once and a rewritten file
is noticed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from embedloop.errors import InputError

LOG_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked", "dwell_ms")
REQUIRED_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked")
# Plain .json is not read: a log folder often holds a manifest or schema next to the logs.
FORMATS = {".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Cursor:
    kind: str
    consumed: int  # NDJSON: bytes; CSV: data rows; Parquet: 1 once read
    fingerprint: str  # see _fingerprint (Parquet: sha256 of the whole file)
    lines: int = 0  # lines (NDJSON) or data rows (CSV, Parquet) consumed, for line numbers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(kind=data["kind"], consumed=int(data["consumed"]),
                   fingerprint=data["fingerprint"], lines=int(data.get("lines", 0)))


@dataclass
class NewRows:
    frame: pd.DataFrame  # LOG_FIELDS + source, line, parse_error; raw values, object dtype
    cursors: dict[str, Cursor]  # updated cursors for every file read (commit after the run)
    notes: list[str]  # things an operator should know (rewritten files, partial lines)


def discover_log_files(source: str | Path) -> list[Path]:
    """A directory (its supported files, sorted) or a glob pattern."""
    source = str(source)
    path = Path(source)
    if path.is_dir():
        candidates: Iterable[Path] = path.iterdir()
    elif path.is_file():
        candidates = [path]
    else:
        candidates = (Path(p) for p in glob.glob(source, recursive=True))
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in FORMATS)
    if not files and not path.is_dir():
        raise InputError(f"no log files found at {source!r} (expected a directory or a glob "
                         f"matching {', '.join(sorted(FORMATS))} files)")
    return files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_missing(value: object) -> bool:
    """None/NaN/NaT, without pd.isna's element-wise answer for a list or dict value."""
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _fingerprint(path: Path, kind: str, consumed: int) -> str:
    """What must not change under a cursor: the consumed head of an NDJSON file, or a
    CSV file's header line (CSV cursors count rows, not bytes)."""
    with path.open("rb") as f:
        if kind == "csv":
            return _sha256(f.readline())
        return _sha256(f.read(min(consumed, HEAD_BYTES)))


def _rename(record: dict[str, Any], column_map: dict[str, str]) -> dict[str, Any]:
    if not column_map:
        return record
    return {column_map.get(k, k): v for k, v in record.items()}


def _row(record: dict[str, Any], source: str, line: int, error: str | None) -> dict[str, Any]:
    row = {f: record.get(f) for f in LOG_FIELDS}
    row.update(source=source, line=line, parse_error=error)
    return row


def _read_ndjson(path: Path, start: int, first_line: int, column_map: dict[str, str]
                 ) -> tuple[list[dict[str, Any]], int, int, list[str]]:
    with path.open("rb") as f:
        f.seek(start)
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: a line still being written, or b""
    notes: list[str] = []
    consumed = start + len(data) - len(tail)
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail)  # a complete last line that just lacks its newline
            consumed += len(tail)
        except ValueError:
            notes.append(f"{path.name}: last line is incomplete; it will be read next run")
    rows = []
    for i, raw in enumerate(lines, start=first_line + 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            rows.append(_row({}, path.name, i, f"not valid JSON ({type(exc).__name__})"))
            continue
        if not isinstance(record, dict):
            rows.append(_row({}, path.name, i, "line is not a JSON object"))
            continue
        try:  # JSON may escape a lone surrogate ("\ud800"): no UTF-8 store can hold it
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            rows.append(_row({}, path.name, i, "text is not valid Unicode (a lone surrogate "
                                               "escape)"))
            continue
        rows.append(_row(_rename(record, column_map), path.name, i, None))
    return rows, consumed, first_line + len(lines), notes


def _read_csv(path: Path, skip_rows: int, column_map: dict[str, str]
              ) -> tuple[list[dict[str, Any]], int]:
    try:
        frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""],
                            skiprows=range(1, skip_rows + 1), on_bad_lines="error")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path.name}: not a readable CSV file ({exc})") from None
    records = frame.rename(columns=column_map).to_dict("records")
    rows = [_row(r, path.name, skip_rows + i, None) for i, r in enumerate(records, start=1)]
    return rows, skip_rows + len(records)


def _read_parquet(path: Path, column_map: dict[str, str]) -> list[dict[str, Any]]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path.name}: not a readable Parquet file ({exc})") from None
    records = frame.rename(columns=column_map).astype(object).to_dict("records")
    return [_row(r, path.name, i, None) for i, r in enumerate(records, start=1)]


def read_new_rows(files: list[Path], cursors: dict[str, Cursor],
                  column_map: dict[str, str] | None = None) -> NewRows:
    """Read what earlier runs have not consumed. Pure with respect to the ledger:
    it returns updated cursors and the caller commits them when the run ends."""
    column_map = column_map or {}
    rows: list[dict[str, Any]] = []
    updated: dict[str, Cursor] = {}
    notes: list[str] = []
    for path in files:
        key = str(path.resolve())
        kind = FORMATS[path.suffix.lower()]
        cursor = cursors.get(key)
        size = path.stat().st_size
        if kind == "parquet":
            fingerprint = _sha256(path.read_bytes())
            if cursor and cursor.fingerprint == fingerprint:
                continue
            if cursor:
                notes.append(f"{path.name}: Parquet file changed since it was read; reading it "
                             f"again (already-seen event ids are quarantined as duplicates)")
            parquet_rows = _read_parquet(path, column_map)
            rows.extend(parquet_rows)
            updated[key] = Cursor(kind, 1, fingerprint, len(parquet_rows))
            continue
        start = cursor.consumed if cursor else 0
        first_line = cursor.lines if cursor else 0
        if cursor and (_fingerprint(path, kind, start) != cursor.fingerprint
                       or (kind == "ndjson" and size < start)):
            notes.append(f"{path.name}: file was rewritten since it was last read; reading it "
                         f"from the start (already-seen event ids are quarantined as duplicates)")
            start = first_line = 0
        if kind == "ndjson":
            if start >= size:
                continue
            new_rows, consumed, lines, file_notes = _read_ndjson(path, start, first_line,
                                                                 column_map)
            notes.extend(file_notes)
        else:
            new_rows, consumed = _read_csv(path, start, column_map)
            lines = consumed
        if consumed == start:
            continue
        rows.extend(new_rows)
        updated[key] = Cursor(kind, consumed, _fingerprint(path, kind, consumed), lines)
    frame = pd.DataFrame(rows, columns=[*LOG_FIELDS, "source", "line", "parse_error"])
    return NewRows(frame=frame.astype(object), cursors=updated, notes=notes)


# ---------------------------------------------------------------------------
# From raw values to typed columns. A value of the wrong type becomes null in
# its typed column and is named in `type_errors`, which validation turns into
# the row's quarantine reason.

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _as_id(value: Any) -> tuple[str | None, str | None]:
    if _missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"not a string ({type(value).__name__})"


def _as_text(value: Any) -> tuple[str | None, str | None]:
    if _missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    return None, f"not a string ({type(value).__name__})"


# str.isdigit() accepts "²" and other digits int() refuses: only ASCII counts here.
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_position(value: Any) -> tuple[float | None, str | None]:
    if _missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not an integer (bool)"
    if isinstance(value, int):
        return float(value), None
    if isinstance(value, float) and value.is_integer():
        return value, None
    if isinstance(value, str) and ASCII_INTEGER.fullmatch(value.strip()):
        return float(int(value)), None
    return None, f"not an integer ({_short(value)})"


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _as_clicked(value: Any) -> tuple[bool | None, str | None]:
    if _missing(value):
        return None, None
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE, None
    return None, f"not a boolean ({_short(value)})"


def _as_number(value: Any) -> tuple[float | None, str | None]:
    if _missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not a number (bool)"
    if isinstance(value, int | float):
        return float(value), None
    if isinstance(value, str):
        try:
            return float(value), None
        except ValueError:
            pass
    return None, f"not a number ({_short(value)})"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_timestamps(values: pd.Series) -> tuple[pd.Series, list[str | None]]:
    """ISO-8601 strings or datetimes -> UTC timestamps; naive times are taken as UTC."""
    errors: list[str | None] = []
    cleaned: list[Any] = []
    for value in values:
        if _missing(value):
            cleaned.append(None)
            errors.append(None)
        elif isinstance(value, str | pd.Timestamp) or hasattr(value, "isoformat"):
            cleaned.append(value)
            errors.append(None)
        else:
            cleaned.append(None)
            errors.append(f"not a timestamp ({type(value).__name__})")
    parsed = pd.to_datetime(pd.Series(cleaned, index=values.index, dtype=object),
                            utc=True, format="ISO8601", errors="coerce")
    for i, (value, stamp) in enumerate(zip(cleaned, parsed, strict=True)):
        if value is not None and pd.isna(stamp):
            errors[i] = f"not an ISO-8601 timestamp ({_short(value)})"
    return parsed, errors


_CONVERTERS = {"event_id": _as_id, "session_id": _as_id, "doc_id": _as_id, "query": _as_text,
               "position": _as_position, "clicked": _as_clicked, "dwell_ms": _as_number}


def to_typed_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows -> typed columns, plus `type_errors` (None, or '; '-joined messages) and
    `bad_fields` (the fields named there; 'row' when the line was not a JSON object)."""
    index = raw.index
    errors: list[list[tuple[str, str]]] = [[] for _ in range(len(raw))]
    out: dict[str, Any] = {}
    for name, convert in _CONVERTERS.items():
        values, problems = [], []
        for value in raw[name]:
            typed, problem = convert(value)
            values.append(typed)
            problems.append(problem)
        out[name] = values
        for i, problem in enumerate(problems):
            if problem:
                errors[i].append((name, problem))
    ts, ts_errors = _parse_timestamps(raw["ts"])
    for i, problem in enumerate(ts_errors):
        if problem:
            errors[i].append(("ts", problem))
    for i, parse_error in enumerate(raw["parse_error"]):
        if isinstance(parse_error, str):
            errors[i].insert(0, ("row", parse_error))

    typed = pd.DataFrame(out, index=index)
    typed = typed.astype({"event_id": object, "session_id": object, "doc_id": object,
                          "query": object, "clicked": object})
    typed["position"] = pd.to_numeric(typed["position"], errors="coerce").astype("float64")
    typed["dwell_ms"] = pd.to_numeric(typed["dwell_ms"], errors="coerce").astype("float64")
    typed["ts"] = ts
    typed["ts_epoch"] = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    typed["type_errors"] = ["; ".join(f"{f}: {m}" for f, m in e) if e else None for e in errors]
    typed["bad_fields"] = [frozenset(f for f, _ in e) for e in errors]
    typed["source"] = raw["source"].to_numpy()
    typed["line"] = raw["line"].to_numpy()
    return typed
