"""The fast path of log reading: rows Arrow can parse alone, without the per-line Python
parser.

The Python readers (readers.py) remain the definition of what a row means. This
module recognizes the rows on which that definition is trivial and parses them in Arrow;
the readers then turn both kinds into the same raw columns:
- NDJSON: a line that is a flat object, in valid UTF-8, whose known fields hold a string,
  an integer (position, dwell_ms), a boolean (clicked) or null, and whose other keys
  hold simple values. One regular expression (RE2, over the whole batch) picks those
  lines out; Arrow's JSON reader parses them. Anything else (not JSON, a number written
  as a string, a float, a key given twice, NaN) goes to the Python reader, line number
  and all.
- CSV: a regular file (a unique header, one record per line, each as wide as the
  header, UTF-8) is parsed by Arrow as text columns; any other by Python's csv module.

Fuzz tests (tests/data/test_fuzz_logs.py) check that both paths read the same rows:
values, their Python types, line numbers and cursors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedloop.ingest.schema import LOG_FIELDS

STRING_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "team")
INTEGER_FIELDS = ("position", "dwell_ms")
# Arrow's types for an NDJSON line's native values (the Python reader's str/int/bool)
NATIVE_TYPES: dict[str, pa.DataType] = {
    **{f: pa.string() for f in STRING_FIELDS}, **{f: pa.int64() for f in INTEGER_FIELDS},
    "clicked": pa.bool_()}

_WS = r"[ \t\r]*"
# A JSON string of valid UTF-8 (the pattern runs over bytes) without raw control
# characters, whose escapes are not surrogates (the Python path refuses a lone one, with
# its own reason, and Arrow cannot hold either).
_UTF8 = (r"[\x20\x21\x23-\x5b\x5d-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
         r"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
         r"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_STRING = (rf'"(?:{_UTF8}|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{{3}}'
           r'|[dD][0-7][0-9a-fA-F]{2}))*"')
_INTEGER = r"-?(?:0|[1-9][0-9]{0,14})"  # well inside int64 and exact as a float64
_VALUE = {"string": _STRING, "int64": _INTEGER, "bool": "(?:true|false)"}
_SIMPLE = rf"(?:{_STRING}|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false)"


def ndjson_pattern(keys: Mapping[str, str], extra_keys: list[str]) -> str:
    """A line holding only `keys` (source name -> field) with values of their fields'
    native types or null, and `extra_keys` with simple values, in any order."""
    members = [f"{_literal(key)}{_WS}:{_WS}(?:{_VALUE[str(NATIVE_TYPES[field])]}|null)"
               for key, field in keys.items()]
    members += [f"{_literal(key)}{_WS}:{_WS}(?:{_SIMPLE}|null)" for key in extra_keys]
    member = "(?:" + "|".join(members) + ")"
    return rf"^{_WS}\{{{_WS}(?:{member}(?:{_WS},{_WS}{member})*)?{_WS}\}}{_WS}\n?$"


def _literal(key: str) -> str:
    """A key as JSON writes it unescaped, as a pattern over its UTF-8 bytes."""
    return "".join(f"\\x{byte:02x}" for byte in json.dumps(key, ensure_ascii=False).encode())


def split_lines(data: bytes) -> pa.LargeBinaryArray:
    """`data` (whole lines, each ending in a newline) as one element per line, newline
    included, without copying it."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    offsets = np.zeros(len(ends) + 1, np.int64)
    offsets[1:] = ends + 1
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def native_ndjson_rows(lines: pa.LargeBinaryArray, keys: Mapping[str, str],
                       extra_keys: list[str]) -> tuple[np.ndarray, pa.Table] | None:
    """(mask of the native lines, their rows as a table of `keys`' fields), or None when
    too many lines that look native are refused by Arrow's reader after all (a key given
    twice): then the Python path reads every line. `lines` end in their newline."""
    native = _matches(lines, ndjson_pattern(keys, extra_keys))
    schema = pa.schema([(key, NATIVE_TYPES[field]) for key, field in keys.items()])
    pieces: list[pa.Table] = []
    refused: list[int] = []
    _read_json(lines, np.flatnonzero(native), schema, pieces, refused)
    if len(refused) > MAX_REFUSED:
        return None
    native[refused] = False
    # the pieces come in line order: _read_json halves left before right
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return native, table.rename_columns([keys[k] for k in table.column_names])


def _matches(lines: pa.LargeBinaryArray, pattern: str) -> np.ndarray:
    """Which lines match, the halves on two threads (Arrow's kernel runs on one, without
    the GIL: the pattern is a third of a million-line read)."""
    from concurrent.futures import ThreadPoolExecutor

    half = len(lines) // 2
    if half < 50_000:
        return pc.match_substring_regex(lines, pattern=pattern).to_numpy(zero_copy_only=False)
    with ThreadPoolExecutor(2) as pool:
        parts = pool.map(lambda part: pc.match_substring_regex(part, pattern=pattern),
                         [lines.slice(0, half), lines.slice(half)])
        return np.concatenate([p.to_numpy(zero_copy_only=False) for p in parts])


MAX_REFUSED = 64  # lines Arrow refuses that passed the pattern, before giving up on it


def _read_json(lines: pa.LargeBinaryArray, rows: np.ndarray, schema: pa.Schema,
               pieces: list[pa.Table], refused: list[int]) -> None:
    """`rows` of `lines` parsed by Arrow into `pieces`; a block Arrow refuses is halved
    until the refused lines are found (`refused`), so one odd line costs a few parses,
    not the fast path."""
    import pyarrow.json as pj

    if len(rows) == 0 or len(refused) > MAX_REFUSED:
        return
    try:
        table = pj.read_json(
            pa.BufferReader(_concatenated(lines.filter(_mask(rows, len(lines))))),
            parse_options=pj.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="ignore"),
            read_options=pj.ReadOptions(block_size=16 << 20))
    except pa.ArrowInvalid:
        table = None
    if table is not None and table.num_rows == len(rows):
        pieces.append(table)
    elif len(rows) == 1:
        refused.append(int(rows[0]))
    else:
        half = len(rows) // 2
        _read_json(lines, rows[:half], schema, pieces, refused)
        _read_json(lines, rows[half:], schema, pieces, refused)


def _mask(rows: np.ndarray, n: int) -> pa.Array:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return pa.array(mask)


def _concatenated(array: pa.LargeBinaryArray) -> pa.Buffer:
    """The values of a binary array as one buffer (they are stored back to back)."""
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset:array.offset
                                                           + len(array) + 1]
    return array.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))



def ndjson_keys(column_map: Mapping[str, str],
                first_records: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]] | None:
    """(source key -> field, the other keys the first records hold) for the native path,
    or None where it cannot mimic the Python reader: a field reachable under two keys
    (the last one in a line wins there)."""
    keys = {source: field for source, field in column_map.items() if field in LOG_FIELDS}
    for field in LOG_FIELDS:
        if field not in column_map:
            keys.setdefault(field, field)
    fields = list(keys.values())
    if len(set(fields)) != len(fields):
        return None
    extra = sorted({str(k) for record in first_records for k in record} - set(keys))
    return keys, [k for k in extra if _utf8(k)]


def _utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:  # a lone surrogate from an escape: such lines go to Python
        return False


def objects(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow column as the Python reader's values: str, int, bool or None."""
    if pa.types.is_integer(column.type) and column.null_count:
        return np.array(column.to_pylist(), dtype=object)
    values = column.to_numpy(zero_copy_only=False)
    return values if values.dtype == object else values.astype(object)


def native_csv_rows(data: bytes, skip_rows: int) -> pa.Table | None:
    """The data rows after the first `skip_rows` as string columns (an empty field is
    null), when the file is regular: a unique header, every record on one line and as
    wide as the header, no blank line, all UTF-8. Otherwise None (Python reads it)."""
    import csv
    import io

    import pyarrow.csv as pcsv

    if data.count(b"\r") != data.count(b"\r\n"):
        return None  # a lone carriage return: a line end to Arrow, text to Python (quoted)
    head = data[:data.find(b"\n") + 1 or len(data)]
    try:
        header = next(csv.reader(io.StringIO(head.decode("utf-8"))), None)
    except (UnicodeDecodeError, csv.Error):
        return None
    if not header or len(set(header)) != len(header) or "\r" in "".join(header):
        return None
    try:
        table = pcsv.read_csv(pa.py_buffer(data), read_options=pcsv.ReadOptions(
            skip_rows_after_names=skip_rows, block_size=16 << 20),
            parse_options=pcsv.ParseOptions(newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowKeyError):
        return None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if table.column_names != header or lines != 1 + skip_rows + table.num_rows:
        return None  # a blank line or a quoted newline: line numbers need Python's reader
    return table
