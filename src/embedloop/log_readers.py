"""One reader per log format, in a table keyed by file suffix.

Readers never drop a row: a line that is not even JSON, or a CSV row with the wrong
number of fields or bytes that are not UTF-8, still becomes a row with `parse_error`
set, so that validation quarantines it with a reason and a line number. A file that
cannot be read at all raises InputError (the caller skips it and says so).

A reader reads from where earlier runs stopped: `start` is in the format's own unit
(bytes for NDJSON, data rows for CSV; Parquet files are read whole), and it returns
how far it got. To add a format: write its reader and add a `LogFormat` to `FORMATS`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from embedloop.errors import InputError, one_line
from embedloop.log_schema import FRAME_COLUMNS, LOG_FIELDS


@dataclass
class Read:
    frame: pd.DataFrame  # FRAME_COLUMNS, raw values, object dtype
    consumed: int  # where the next read starts, in the format's unit
    lines: int  # file lines (NDJSON) or data rows (CSV, Parquet) read so far, for numbering
    notes: list[str] = field(default_factory=list)


Reader = Callable[[Path, int, int, dict[str, str]], Read]


@dataclass(frozen=True)
class LogFormat:
    kind: str  # recorded in the file's cursor
    read: Reader  # (path, start, lines before start, column_map) -> Read
    resumable: bool  # False: the file is read whole, again only if it changes


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


def read_ndjson(path: Path, start: int, first_line: int, column_map: dict[str, str]) -> Read:
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
    return Read(frame, consumed, first_line + len(raw_lines), notes)


def read_csv(path: Path, skip_rows: int, _: int, column_map: dict[str, str]) -> Read:
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
            return Read(_columns_frame(pd.DataFrame(), column_map, path.name, []), 0, 0)
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
    return Read(out, skip_rows + len(records), skip_rows + len(records))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a surrogate escape stands for a byte that was not UTF-8
        return False


def read_parquet(path: Path, _: int, __: int, column_map: dict[str, str]) -> Read:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"not a readable Parquet file ({one_line(exc)})") from None
    return Read(_columns_frame(frame, column_map, path.name, range(1, len(frame) + 1)), 1,
                len(frame))


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


NDJSON = LogFormat("ndjson", read_ndjson, resumable=True)
CSV = LogFormat("csv", read_csv, resumable=True)
PARQUET = LogFormat("parquet", read_parquet, resumable=False)
# Plain .json is not read: a log folder often holds a manifest or schema next to the logs.
FORMATS = {".jsonl": NDJSON, ".ndjson": NDJSON, ".csv": CSV, ".parquet": PARQUET,
           ".pq": PARQUET}
