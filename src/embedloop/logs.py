"""The interaction-log contract, its readers, and the ledger of what was read.

One row per shown result (see `LOG_FIELDS`). Readers never drop a row: a line
that is not even JSON, or a CSV row with the wrong number of fields or bytes that
are not UTF-8, still becomes a row, with `parse_error` set, so that validation
can quarantine it with a reason and a line number and the counts add up. A file
that cannot be read at all (a damaged Parquet file, no permission) is skipped and
named in `NewRows.unreadable`; the run goes on with the other files.

Incremental reading: a `Cursor` per file records how much of it earlier runs
consumed (bytes for NDJSON, data rows for CSV, all-or-nothing for Parquet) and
a fingerprint of its head, so appended rows are read once and a rewritten file
is noticed.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from embedloop.errors import InputError, one_line

LOG_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked", "dwell_ms")
REQUIRED_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked")
# Plain .json is not read: a log folder often holds a manifest or schema next to the logs.
FORMATS = {".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}
HEAD_BYTES = 4096
FRAME_COLUMNS = [*LOG_FIELDS, "source", "line", "parse_error"]


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
    unreadable: dict[str, str] = field(default_factory=dict)  # file name -> why, skipped


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
    if path.is_file() and path.suffix.lower() not in FORMATS:
        raise InputError(f"{source}: {path.suffix or 'a file without extension'} is not a log "
                         f"format embedloop reads ({', '.join(sorted(FORMATS))})")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in FORMATS)
    if not files and not path.is_dir():
        raise InputError(f"no log files found at {source!r} (expected a directory or a glob "
                         f"matching {', '.join(sorted(FORMATS))} files)")
    return files


def files_not_read(source: str | Path) -> list[Path]:
    """Files in a log directory that are not in a log format (named, so none is missed)."""
    path = Path(source)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() not in FORMATS)


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


def _lone_surrogate(record: dict[str, Any]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _parse_line(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """(record, None), or ({}, why the line is not a record), or ({}, "blank")."""
    try:
        record = orjson.loads(raw)  # 2.5x json.loads; it is strict, so what it refuses ...
        # ... and an integer past 64 bits, which it turns into a float, json.loads judges
        if type(record) is dict and float in map(type, record.values()):
            raise orjson.JSONDecodeError("a float: perhaps a long integer", "", 0)
    except orjson.JSONDecodeError:
        try:  # NaN literals, "\ud800", long integers
            record = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            if not raw.strip():
                return {}, "blank"
            return {}, f"not valid JSON ({type(exc).__name__})"
    if type(record) is not dict:
        return {}, "line is not a JSON object"
    # JSON may escape a lone surrogate ("\ud800"): no UTF-8 store can hold it.
    if b"\\u" in raw and _lone_surrogate(record):
        return {}, "text is not valid Unicode (a lone surrogate escape)"
    return record, None


def _read_ndjson(path: Path, start: int, first_line: int, column_map: dict[str, str]
                 ) -> tuple[pd.DataFrame, int, int, list[str]]:
    with path.open("rb") as f:
        f.seek(start)
        data = f.read()
    raw_lines = data.split(b"\n")
    tail = raw_lines.pop()  # bytes after the last newline: a line still being written, or b""
    notes: list[str] = []
    consumed = start + len(data) - len(tail)
    if tail.strip():
        try:
            json.loads(tail)
            raw_lines.append(tail)  # a complete last line that just lacks its newline
            consumed += len(tail)
        except ValueError:
            notes.append(f"{path.name}: last line is incomplete; it will be read next run")
    # Values go straight into columns and each parsed record is dropped at once: keeping
    # a million records alive until the end doubled the time of a 1M-line read here.
    columns: dict[str, list[Any]] = {name: [] for name in LOG_FIELDS}
    appends = [(columns[name].append, name) for name in LOG_FIELDS]
    lines: list[int] = []
    errors: list[str | None] = []
    keys: dict[str, None] = {}  # the first records' field names, in order, for hints
    for i, raw in enumerate(raw_lines, start=first_line + 1):
        record, error = _parse_line(raw)
        if error == "blank":
            continue
        if len(lines) < 50:
            keys.update(dict.fromkeys(map(str, record)))
        if column_map:
            record = {column_map.get(k, k): v for k, v in record.items()}
        get = record.get
        for append, name in appends:
            append(get(name))
        lines.append(i)
        errors.append(error)
    frame = pd.DataFrame({**columns, "source": [path.name] * len(lines), "line": lines,
                          "parse_error": errors}, columns=FRAME_COLUMNS, dtype=object)
    frame.attrs["source_columns"] = list(keys)
    return frame, consumed, first_line + len(raw_lines), notes


def _read_csv(path: Path, skip_rows: int, column_map: dict[str, str]
              ) -> tuple[pd.DataFrame, int]:
    """Data rows after the first `skip_rows`, one frame row per CSV record, numbered by
    the file line it starts on. A record whose field count differs from the header's,
    or that holds bytes that are not UTF-8, becomes a row with `parse_error` set."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    # surrogateescape keeps undecodable bytes visible per record instead of failing the file
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"),
                                    newline=""))
    csv.field_size_limit(1 << 30)  # a 200 kB junk query is a row to quarantine, not a crash
    try:
        header = next(reader, None)
        if header is None:  # an empty file: nothing to read yet
            return _columns_frame(pd.DataFrame(), column_map, path.name, []), 0
        width = len(header)
        records: list[list[str | None]] = []
        lines: list[int] = []
        errors: list[str | None] = []
        seen = 0
        line = reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if not record:  # a blank line is no record
                continue
            seen += 1
            if seen <= skip_rows:
                continue
            error = None
            if len(record) != width:
                error = f"expected {width} fields (as in the header), found {len(record)}"
            elif not _is_utf8("\x1f".join(record)):
                error = "bytes that are not valid UTF-8"
            records.append([None] * width if error else [v if v else None for v in record])
            lines.append(start)
            errors.append(error)
    except csv.Error as exc:
        raise InputError(f"not a readable CSV file (line {reader.line_num}: {exc})") from None
    frame = pd.DataFrame(records, columns=header, dtype=object)
    out = _columns_frame(frame, column_map, path.name, lines)
    out["parse_error"] = pd.Series(errors, dtype=object)
    return out, skip_rows + len(records)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a surrogate escape stands for a byte that was not UTF-8
        return False


def _read_parquet(path: Path, column_map: dict[str, str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"not a readable Parquet file ({one_line(exc)})") from None
    return _columns_frame(frame, column_map, path.name, range(1, len(frame) + 1))


def _columns_frame(frame: pd.DataFrame, column_map: dict[str, str], source: str,
                   lines: Sequence[int]) -> pd.DataFrame:
    """A tabular file's columns as raw rows; a missing column is all nulls."""
    source_columns = [str(c) for c in frame.columns]
    frame = frame.rename(columns=column_map)
    frame = frame.loc[:, ~frame.columns.duplicated(keep="last")]
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)), columns=FRAME_COLUMNS, dtype=object)
    for name in LOG_FIELDS:
        if name in frame.columns:
            column = frame[name].astype(object)
            out[name] = column.where(column.notna(), None).to_numpy()
    out["source"] = source
    out["line"] = list(lines)
    out = out.astype(object)
    out.attrs["source_columns"] = source_columns
    return out


def read_new_rows(files: list[Path], cursors: dict[str, Cursor],
                  column_map: dict[str, str] | None = None) -> NewRows:
    """Read what earlier runs have not consumed. Pure with respect to the ledger:
    it returns updated cursors and the caller commits them when the run ends.
    A file that cannot be read at all is named in `unreadable` and skipped; where it
    can be fingerprinted its cursor is moved too, so it is not tried again until it
    changes."""
    column_map = column_map or {}
    frames: list[pd.DataFrame] = []
    updated: dict[str, Cursor] = {}
    notes: list[str] = []
    unreadable: dict[str, str] = {}
    for path in files:
        key = str(path.resolve())
        try:
            read = _read_file(path, cursors.get(key), column_map, notes)
        except (OSError, InputError) as exc:
            why = str(exc) if isinstance(exc, InputError) else one_line(exc)
            unreadable[path.name] = why  # reported there, not also as a note
            with contextlib.suppress(OSError):  # no permission: tried again next run
                updated[key] = Cursor(FORMATS[path.suffix.lower()], 0,
                                      UNREADABLE + _sha256(path.read_bytes()))
            continue
        if read is not None:
            frames.append(read[0])
            updated[key] = read[1]
            hint = missing_columns_note(path.name, read[0], column_map)
            if hint:
                notes.append(hint)
    frames = [f for f in frames if len(f)]
    frame = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=FRAME_COLUMNS))
    return NewRows(frame=frame.astype(object), cursors=updated, notes=notes,
                   unreadable=unreadable)


def missing_columns_note(name: str, frame: pd.DataFrame,
                         column_map: dict[str, str]) -> str | None:
    """Required fields that no row of a file holds: a file written with other column
    names quarantines every row as missing_*, so say which and how to map them."""
    parsed = frame[frame["parse_error"].isna()]
    if parsed.empty:
        return None
    missing = [f for f in REQUIRED_FIELDS if parsed[f].isna().all()]
    if not missing:
        return None
    has = [c for c in frame.attrs.get("source_columns", []) if c not in column_map]
    has_text = f"; its columns are {', '.join(has[:12])}" if has else ""
    example = next((c for c in has if c not in LOG_FIELDS), None)
    how = ("map them in embedloop.toml, e.g. [embedloop.column_map] "
           f"{example} = \"{missing[0]}\"" if example
           else "map them with column_map in embedloop.toml")
    if len(missing) == len(REQUIRED_FIELDS):
        return (f"{name}: none of the expected fields ({', '.join(REQUIRED_FIELDS)}) found, so "
                f"every row is quarantined{has_text}. If they are there under other names, "
                f"{how}")
    return (f"{name}: no row has {', '.join(missing)}{has_text}. If the file names "
            f"{'it' if len(missing) == 1 else 'them'} differently, {how}")


UNREADABLE = "unreadable:"  # cursor fingerprint prefix: the whole file, as it was skipped


def _read_file(path: Path, cursor: Cursor | None, column_map: dict[str, str],
               notes: list[str]) -> tuple[pd.DataFrame, Cursor] | None:
    """One file's unread rows and its new cursor, or None when it holds nothing new."""
    kind = FORMATS[path.suffix.lower()]
    if cursor and cursor.fingerprint.startswith(UNREADABLE):
        if cursor.fingerprint == UNREADABLE + _sha256(path.read_bytes()):
            return None  # skipped before and unchanged since
        cursor = None  # changed: a fresh start
    if kind == "parquet":
        fingerprint = _sha256(path.read_bytes())
        if cursor and cursor.fingerprint == fingerprint:
            return None
        if cursor:
            notes.append(f"{path.name}: Parquet file changed since it was read; reading it "
                         f"again (already-seen event ids are quarantined as duplicates)")
        parquet_rows = _read_parquet(path, column_map)
        return parquet_rows, Cursor(kind, 1, fingerprint, len(parquet_rows))
    size = path.stat().st_size
    if size == 0:  # being created, or left empty by a failed export: said once
        if cursor is None:
            notes.append(f"{path.name}: empty file (0 bytes), nothing to read yet")
            return pd.DataFrame(columns=FRAME_COLUMNS), Cursor(kind, 0, _sha256(b""), 0)
        return None
    start = cursor.consumed if cursor else 0
    first_line = cursor.lines if cursor else 0
    if cursor and start and (_fingerprint(path, kind, start) != cursor.fingerprint
                             or (kind == "ndjson" and size < start)):
        notes.append(f"{path.name}: file was rewritten since it was last read; reading it "
                     f"from the start (already-seen event ids are quarantined as duplicates)")
        start = first_line = 0
    if kind == "ndjson":
        if start >= size:
            return None
        new_rows, consumed, lines, file_notes = _read_ndjson(path, start, first_line,
                                                             column_map)
        notes.extend(file_notes)
    else:
        new_rows, consumed = _read_csv(path, start, column_map)
        lines = consumed
    if consumed == start:
        return None
    return new_rows, Cursor(kind, consumed, _fingerprint(path, kind, consumed), lines)


# ---------------------------------------------------------------------------
# From raw values to typed columns. A value of the wrong type becomes null in
# its typed column and is named in `type_errors`, which validation turns into
# the row's quarantine reason.

def _as_id(value: Any) -> tuple[str | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"not a string ({type(value).__name__})"


def _as_text(value: Any) -> tuple[str | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    return None, f"not a string ({type(value).__name__})"


# str.isdigit() accepts "²" and other digits int() refuses: only ASCII counts here.
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_position(value: Any) -> tuple[float | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not an integer (bool)"
    if isinstance(value, int):
        return _to_float(value), None
    if isinstance(value, float) and value.is_integer():
        return value, None
    if isinstance(value, str) and ASCII_INTEGER.fullmatch(value.strip()):
        return float(value), None  # not int(): it refuses more than 4300 digits
    return None, f"not an integer ({_short(value)})"


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _as_clicked(value: Any) -> tuple[bool | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE, None
    return None, f"not a boolean ({_short(value)})"


def _as_number(value: Any) -> tuple[float | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not a number (bool)"
    if isinstance(value, int | float):
        return _to_float(value), None
    if isinstance(value, str):
        try:
            return float(value), None
        except ValueError:
            pass
    return None, f"not a number ({_short(value)})"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_timestamps(values: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """ISO-8601 strings or datetimes -> UTC timestamps; naive times are taken as UTC."""
    types = values.map(type)
    usable = types.isin((str, pd.Timestamp))
    errors: dict[int, str] = {}
    for i in np.flatnonzero(~usable.to_numpy() & values.notna().to_numpy()):
        if not hasattr(values.iat[i], "isoformat"):  # datetime.datetime, datetime.date
            errors[int(i)] = f"not a timestamp ({type(values.iat[i]).__name__})"
    cleaned = values.where(values.notna(), None).astype(object)
    if errors:
        cleaned.iloc[list(errors)] = None
    parsed = pd.to_datetime(cleaned, utc=True, format="ISO8601", errors="coerce")
    for i in np.flatnonzero(parsed.isna().to_numpy() & cleaned.notna().to_numpy()):
        errors[int(i)] = f"not an ISO-8601 timestamp ({_short(cleaned.iat[i])})"
    return parsed, errors


Converter = Callable[[Any], tuple[Any, str | None]]


def _typed_column(raw: pd.Series, convert: Converter, fast_types: tuple[type, ...] = (),
                  cast: Callable[[pd.Series], Any] = lambda s: s.to_numpy(),
                  from_text: Callable[[pd.Series], tuple[pd.Series, pd.Series]] | None = None,
                  ) -> tuple[np.ndarray, dict[int, str]]:
    """`convert` applied to every value, with the common cases done column-wise: values of
    `fast_types` go through `cast`, strings through `from_text` (values, parsed-ok mask).
    Everything else, and every string `from_text` could not parse, goes to `convert`,
    which is the definition of what a value means."""
    out = np.full(len(raw), None, dtype=object)
    pending = raw.notna().to_numpy().copy()
    inferred = _INFERRED.get(pd.api.types.infer_dtype(raw, skipna=True))
    if inferred and set(inferred) <= set(fast_types):
        # Every non-null value is of a fast type (the usual column): no per-value look.
        types = None
        fast = pending.copy()
    else:
        types = raw.map(type).to_numpy()
        fast = (np.isin(types, fast_types) & pending if fast_types
                else np.zeros(len(raw), bool))
    if fast.any():
        out[fast] = cast(raw[fast])
        pending &= ~fast
    if from_text is not None and types is not None:
        text = np.isin(types, (str,)) & pending
        if text.any():
            values, ok = from_text(raw[text].astype(str))
            ok = ok.to_numpy(dtype=bool)
            rows = np.flatnonzero(text)[ok]
            out[rows] = values.to_numpy()[ok]
            pending[rows] = False
    errors: dict[int, str] = {}
    for i in np.flatnonzero(pending):
        out[i], problem = convert(raw.iat[i])
        if problem:
            errors[int(i)] = problem
    return out, errors


# pandas' C-level type inference (skipping nulls) -> the fast types it guarantees.
_INFERRED: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "boolean": (bool,), "floating": (float,),
    "mixed-integer-float": (int, float)}


def _floats(values: pd.Series) -> np.ndarray:
    """Python ints/floats -> float64; an int too large for a float becomes inf (and then
    fails the range checks) instead of raising OverflowError."""
    try:
        return values.to_numpy(dtype=np.float64)
    except OverflowError:
        return np.array([_to_float(v) for v in values], dtype=np.float64)


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _position_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    ok = text.str.fullmatch(r"\s*[+-]?[0-9]+\s*", flags=re.ASCII)
    return text.where(ok, "nan").astype(float), ok


def _clicked_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    word = text.str.strip().str.lower()
    return word.isin(_TRUE).astype(object), word.isin(_TRUE | _FALSE)


def _number_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(text, errors="coerce")
    return values, values.notna()


def to_typed_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows -> typed columns, plus `type_errors` (None, or '; '-joined messages) and
    `bad_fields` (the fields named there; 'row' when the line was not a JSON object)."""
    columns = {
        "event_id": _typed_column(raw["event_id"], _as_id, (str,)),
        "session_id": _typed_column(raw["session_id"], _as_id, (str,)),
        "doc_id": _typed_column(raw["doc_id"], _as_id, (str,)),
        "query": _typed_column(raw["query"], _as_text, (str,)),
        "position": _typed_column(raw["position"], _as_position, (int,), _floats,
                                  _position_text),
        "clicked": _typed_column(raw["clicked"], _as_clicked, (bool,), from_text=_clicked_text),
        "dwell_ms": _typed_column(raw["dwell_ms"], _as_number, (int, float), _floats,
                                  _number_text),
    }
    ts, ts_errors = _parse_timestamps(raw["ts"].reset_index(drop=True))
    problems: dict[int, list[tuple[str, str]]] = {}
    for i, parse_error in enumerate(raw["parse_error"]):
        if isinstance(parse_error, str):
            problems[i] = [("row", parse_error)]
    for name, (_, errors) in columns.items():
        if name == "position":  # keep the contract's field order in messages
            for i, problem in ts_errors.items():
                problems.setdefault(i, []).append(("ts", problem))
        for i, problem in errors.items():
            problems.setdefault(i, []).append((name, problem))

    typed = pd.DataFrame({name: values for name, (values, _) in columns.items()},
                         index=raw.index, dtype=object)
    typed["position"] = pd.to_numeric(typed["position"], errors="coerce").astype("float64")
    typed["dwell_ms"] = pd.to_numeric(typed["dwell_ms"], errors="coerce").astype("float64")
    typed["ts"] = pd.Series(ts.array, index=raw.index)
    typed["ts_epoch"] = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    type_errors = np.full(len(raw), None, dtype=object)
    bad_fields = np.full(len(raw), frozenset(), dtype=object)
    for i, found in problems.items():
        type_errors[i] = "; ".join(f"{f}: {m}" for f, m in found)
        bad_fields[i] = frozenset(f for f, _ in found)
    typed["type_errors"] = pd.Series(type_errors, index=raw.index, dtype=object)
    typed["bad_fields"] = pd.Series(bad_fields, index=raw.index, dtype=object)
    typed["source"] = raw["source"].to_numpy()
    typed["line"] = raw["line"].to_numpy()
    return typed
