"""One reader per log format, in a table keyed by file suffix.

Readers never drop a row: a line that is not even JSON, or a CSV row with the wrong
number of fields or bytes that are not UTF-8, still becomes a row with `parse_error`
set, so that validation quarantines it with a reason and a line number. A file that
cannot be read at all raises InputError (the caller skips it and says so).

A reader reads from where earlier runs stopped: `start` is in the format's own unit
(bytes for NDJSON, data rows for CSV; Parquet files are read whole), and yields the rows
in chunks of about `CHUNK_BYTES` of input, each with how far the reading got, so a
batch of any size is read in bounded memory. To add a format: write its reader and add
a `LogFormat` to `FORMATS`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from embedloop.errors import InputError, one_line
from embedloop.ingest.native import (
    native_csv_rows,
    native_ndjson_rows,
    ndjson_keys,
    objects,
    split_lines,
)
from embedloop.ingest.schema import FRAME_COLUMNS, LOG_FIELDS


@dataclass
class Read:
    frame: pd.DataFrame  # FRAME_COLUMNS, raw values, object dtype
    consumed: int  # where the next read starts, in the format's unit
    lines: int  # file lines (NDJSON) or data rows (CSV, Parquet) read so far, for numbering
    notes: list[str] = field(default_factory=list)


# About this much input per chunk (~230k simulator rows of NDJSON, ~380k of CSV): large
# enough that validation's fixed cost per chunk (~0.4 s) stays small, small enough that
# a chunk's Python objects stay well under a gigabyte.
CHUNK_BYTES = 64 << 20
PARQUET_ROW_BYTES = 256  # Parquet is read in rows: about this much of other formats a row

Reader = Callable[[Path, int, int, dict[str, str], int | None], Iterator[Read]]


@dataclass(frozen=True)
class LogFormat:
    kind: str  # recorded in the file's cursor
    # (path, start, lines before start, column_map, chunk bytes or None for all) -> the
    # rows in chunks, each Read's consumed and lines counting from the file's start
    chunks: Reader
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


def ndjson_chunks(path: Path, start: int, first_line: int, column_map: dict[str, str],
                  chunk_bytes: int | None = CHUNK_BYTES) -> Iterator[Read]:
    size = path.stat().st_size
    while start < size:
        read = read_ndjson(path, start, first_line, column_map, limit=chunk_bytes)
        yield read
        if read.consumed == start or read.notes:  # only an incomplete last line is left
            return  # (a note comes only from the end of the file)
        start, first_line = read.consumed, read.lines


def read_ndjson(path: Path, start: int, first_line: int, column_map: dict[str, str],
                native: bool = True, limit: int | None = None) -> Read:
    """Lines from byte `start` on: all of them, or those in the first `limit` bytes (and
    the rest of the line the limit falls in). The lines Arrow can read alone
    (native.py) are read there; the rest one by one here, which is what every line
    means (`native=False` reads them all here: the tests compare the two)."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(limit) if limit else f.read()
        if limit and len(data) == limit:
            data += f.readline()  # up to the end of the line, or of the file
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]  # bytes after the last newline: a line still being written, or b""
    body = data[:cut]
    notes: list[str] = []
    consumed = start + cut
    if tail.strip():
        try:
            json.loads(tail)
            body += tail + b"\n"  # a complete last line that just lacks its newline
            consumed += len(tail)
        except ValueError:
            notes.append(f"{path.name}: last line is incomplete; it will be read next run")
    lines = split_lines(body)
    first_records = _first_records(lines)
    keys = [*dict.fromkeys(str(k) for record in first_records for k in record)]
    found = None
    shape = ndjson_keys(column_map, first_records)
    if native and shape is not None and len(lines):
        found = native_ndjson_rows(lines, *shape)
    if found is None:  # the Python reader reads every line
        mask, table = np.zeros(len(lines), bool), None
    else:
        mask, table = found
    columns, line_numbers, errors = _python_rows(lines.filter(pa.array(~mask)),
                                                 np.flatnonzero(~mask) + first_line + 1,
                                                 column_map)
    if table is not None and table.num_rows:
        native_lines = np.flatnonzero(mask) + first_line + 1
        order = np.argsort(np.concatenate([line_numbers, native_lines]), kind="stable")
        for name in LOG_FIELDS:
            columns[name] = np.concatenate([columns[name], objects(table.column(name))])[order]
        line_numbers = np.concatenate([line_numbers, native_lines])[order]
        errors = np.concatenate([errors, np.full(len(native_lines), None, object)])[order]
    n = len(line_numbers)
    frame = pd.DataFrame({**columns, "source": np.full(n, path.name, dtype=object),
                          "line": line_numbers.astype(object), "parse_error": errors},
                         columns=FRAME_COLUMNS, dtype=object)
    frame.attrs["source_columns"] = keys
    return Read(frame, consumed, first_line + len(lines), notes)


def _first_records(lines: pa.LargeBinaryArray, n: int = 50) -> list[dict[str, Any]]:
    """The first `n` records, for their field names (hints about unmapped columns)."""
    records = []
    for raw in lines.slice(0, 4 * n).to_pylist():
        record, error = _parse_line(raw[:-1])
        if error is None:
            records.append(record)
        if len(records) == n:
            break
    return records


def _python_rows(lines: pa.LargeBinaryArray, numbers: np.ndarray,
                 column_map: dict[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                      np.ndarray]:
    """Lines read one by one: (columns, line numbers, parse errors); blank lines are no
    rows. Values go straight into columns and each record is dropped at once."""
    columns: dict[str, list[Any]] = {name: [] for name in LOG_FIELDS}
    appends = [(columns[name].append, name) for name in LOG_FIELDS]
    kept: list[int] = []
    errors: list[str | None] = []
    for number, raw in zip(numbers.tolist(), lines.to_pylist(), strict=True):
        record, error = _parse_line(raw[:-1])  # without its newline
        if error == "blank":
            continue
        if column_map:
            record = {column_map.get(k, k): v for k, v in record.items()}
        get = record.get
        for append, name in appends:
            append(get(name))
        kept.append(number)
        errors.append(error)
    return ({name: _object_array(values) for name, values in columns.items()},
            np.array(kept, dtype=np.int64), _object_array(errors))


def _object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values  # element by element: a list value stays one element
    return out


def csv_chunks(path: Path, skip_rows: int, _: int, column_map: dict[str, str],
               chunk_bytes: int | None = CHUNK_BYTES) -> Iterator[Read]:
    """A file up to `chunk_bytes` is read whole (`read_csv`). A bigger one is read in
    blocks of whole lines while it stays regular (native.py: there a line is a
    record, so a block ends where a record does); from the first block that is not, the
    csv module reads the rest, in chunks of records."""
    if chunk_bytes is None or path.stat().st_size <= chunk_bytes:
        yield read_csv(path, skip_rows, 0, column_map)
        return
    with path.open("rb") as f:
        if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
            f.seek(0)
        header = f.readline()
        offset, rows = f.tell(), 0  # where the next block starts; the data rows before it
        while True:
            block = f.read(chunk_bytes)
            if len(block) == chunk_bytes:
                block += f.readline()
            if not block:
                return
            table = native_csv_rows(header + block, 0)
            if table is None:
                break
            skip = min(max(skip_rows - rows, 0), table.num_rows)
            if skip < table.num_rows:
                first = rows + skip + 2  # line 1 is the header, then a record a line
                kept = table.slice(skip)
                yield Read(_columns_frame(list(zip(kept.column_names, kept.columns,
                                                   strict=True)), column_map, path.name,
                                          range(first, first + kept.num_rows)),
                           rows + table.num_rows, rows + table.num_rows)
            rows += table.num_rows
            offset += len(block)
        f.seek(offset)
        text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
        yield from _python_csv_chunks(text, path.name, skip_rows, column_map, chunk_bytes,
                                      header=header, rows_before=rows)


def read_csv(path: Path, skip_rows: int, _: int, column_map: dict[str, str],
             native: bool = True) -> Read:
    """Data rows after the first `skip_rows`, one frame row per CSV record, numbered by
    the file line it starts on. A record whose field count differs from the header's,
    or that holds bytes that are not UTF-8, becomes a row with `parse_error` set.
    A regular file (one record per line, every record as wide as the header, UTF-8) is
    parsed by Arrow; any other by Python's csv module, which defines what a row is
    (`native=False` always uses it: the tests compare the two)."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    regular = native_csv_rows(data, skip_rows) if native else None
    if regular is not None:
        first, rows = skip_rows + 2, regular.num_rows  # the header is line 1, then a row a line
        out = _columns_frame(list(zip(regular.column_names, regular.columns, strict=True)),
                             column_map, path.name, range(first, first + rows))
        return Read(out, skip_rows + rows, skip_rows + rows)
    # surrogateescape keeps undecodable bytes visible per record instead of failing the file
    text = io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline="")
    return next(_python_csv_chunks(text, path.name, skip_rows, column_map, None))


def _python_csv_chunks(text: io.TextIOBase, source: str, skip_rows: int,
                       column_map: dict[str, str], chunk_bytes: int | None, *,
                       header: bytes | None = None, rows_before: int = 0) -> Iterator[Read]:
    """Records read by the csv module from `text`, which starts at the header or, where
    `header` is given (its line), at the record after `rows_before` data rows. A record
    whose field count differs from the header's, or that holds bytes that are not
    UTF-8, becomes a row with `parse_error` set. Chunks of about `chunk_bytes`."""
    reader = csv.reader(text)
    csv.field_size_limit(1 << 30)  # a 200 kB junk query is a row to quarantine, not a crash
    names = (next(csv.reader([header.decode("utf-8", errors="surrogateescape")]), None)
             if header is not None else None)
    line_before = 1 + rows_before if header is not None else 0  # records are lines there
    limit = chunk_bytes // 200 if chunk_bytes else None  # records per chunk, about
    try:
        if names is None:
            names = next(reader, None)
            if names is None:  # an empty file: nothing to read yet
                yield Read(_columns_frame([], column_map, source, []), 0, 0)
                return
        width = len(names)
        records: list[list[str | None]] = []
        lines: list[int] = []
        errors: list[str | None] = []
        seen = rows_before
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
            lines.append(line_before + start)
            errors.append(error)
            if limit and len(records) == limit:
                yield _csv_read(names, records, lines, errors, column_map, source, seen)
                records, lines, errors = [], [], []
    except csv.Error as exc:
        raise InputError(f"not a readable CSV file (line {line_before + reader.line_num}: "
                         f"{exc})") from None
    if records or not limit or seen == rows_before:  # read whole: one Read, maybe empty
        yield _csv_read(names, records, lines, errors, column_map, source,
                        max(seen, skip_rows))


def _csv_read(names: list[str], records: list[list[str | None]], lines: list[int],
              errors: list[str | None], column_map: dict[str, str], source: str,
              rows: int) -> Read:
    cells = np.empty((len(records), len(names)), dtype=object)
    for i, record in enumerate(records):
        cells[i] = record
    out = _columns_frame([(name, cells[:, i]) for i, name in enumerate(names)], column_map,
                         source, lines)
    out["parse_error"] = pd.Series(_object_array(errors), index=out.index, dtype=object)
    return Read(out, rows, rows)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a surrogate escape stands for a byte that was not UTF-8
        return False


def parquet_chunks(path: Path, _: int, __: int, column_map: dict[str, str],
                   chunk_bytes: int | None = CHUNK_BYTES) -> Iterator[Read]:
    """The whole file, in chunks of rows (one chunk when `chunk_bytes` is None)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(
            batch_size=max(chunk_bytes // PARQUET_ROW_BYTES, 1) if chunk_bytes
            else max(parquet.metadata.num_rows, 1))
        read = 0
        for batch in batches:
            # what pd.read_parquet makes of it: the pandas index restored, not a column
            frame = pa.Table.from_batches([batch]).to_pandas()
            columns = [(name, frame.iloc[:, i]) for i, name in enumerate(frame.columns)]
            yield Read(_columns_frame(columns, column_map, path.name,
                                      range(read + 1, read + len(frame) + 1)), 1,
                       read + len(frame))
            read += len(frame)
        if not read:
            columns = [(name, np.empty(0, object)) for name in parquet.schema_arrow.names]
            yield Read(_columns_frame(columns, column_map, path.name, []), 1, 0)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"not a readable Parquet file ({one_line(exc)})") from None


def _columns_frame(columns: list[tuple[Any, Any]], column_map: dict[str, str], source: str,
                   lines: Sequence[int]) -> pd.DataFrame:
    """A tabular file's (name, values) columns, in file order, as raw rows; values are a
    pandas Series, an Arrow array or an object array. A missing column is all nulls.
    Renamed by `column_map`; of two columns that end up with one name, the later wins."""
    renamed = {}
    for name, values in columns:
        renamed[column_map.get(name, name) if isinstance(name, str) else name] = values
    n = len(lines)
    data = {name: (_raw_values(renamed[name]) if name in renamed
                   else np.full(n, None, dtype=object)) for name in LOG_FIELDS}
    data["source"] = np.full(n, source, dtype=object)
    data["line"] = np.fromiter(lines, dtype=np.int64, count=n).astype(object)
    data["parse_error"] = np.full(n, None, dtype=object)
    # dtype=object throughout: pandas would otherwise turn str columns into its string
    # dtype, and back, at a second a million rows
    out = pd.DataFrame(data, columns=FRAME_COLUMNS, dtype=object)
    out.attrs["source_columns"] = [str(name) for name, _ in columns]
    return out


def _raw_values(values: Any) -> np.ndarray:
    """Python values with None for a null (Arrow's null; pandas' NaN, NaT or NA)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return objects(values)
    if isinstance(values, np.ndarray):  # the csv module's str / None already
        return values
    column = values.astype(object)
    return column.where(column.notna(), None).to_numpy()


NDJSON = LogFormat("ndjson", ndjson_chunks, resumable=True)
CSV = LogFormat("csv", csv_chunks, resumable=True)
PARQUET = LogFormat("parquet", parquet_chunks, resumable=False)
# Plain .json is not read: a log folder often holds a manifest or schema next to the logs.
FORMATS = {".jsonl": NDJSON, ".ndjson": NDJSON, ".csv": CSV, ".parquet": PARQUET,
           ".pq": PARQUET}
