"""Property-based: whatever the log lines hold, the reader and the real GX validation
never raise, and every line ends up accepted or quarantined with a reason."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedloop.ingest import schema as log_schema
from embedloop.ingest.readers import read_csv, read_ndjson
from embedloop.ingest.schema import LOG_FIELDS
from embedloop.ingest.validation import validate_logs
from tests.helpers import read_new_rows

DOC_IDS = {"d1", "d2", "d3"}
GOOD = {"event_id": "e", "ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "heart attack",
        "doc_id": "d1", "position": 1, "clicked": True, "dwell_ms": 1200, "team": "candidate"}
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\x1b[31m", "NaN", "true", "1e309", "2026-13-45T99:00Z",
                     "9999-12-31T23:59:59Z", "d1 ", "é" * 2000, "-1", "1.5"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))
MISSING = object()


def altered(draw: st.DrawFn, row: dict[str, Any], fields: int,
            values: st.SearchStrategy[Any]) -> dict[str, Any]:
    """`row` with up to `fields` of its fields dropped or given one of `values`."""
    for field in draw(st.lists(st.sampled_from(LOG_FIELDS), max_size=fields, unique=True)):
        value = draw(st.one_of(st.just(MISSING), values))
        if value is MISSING:
            row.pop(field)
        else:
            row[field] = value
    return row


@st.composite
def log_line(draw: st.DrawFn, index: int) -> str:
    """A row of the contract with any of its fields replaced, dropped or added to, or a
    line that is not a JSON object at all."""
    kind = draw(st.sampled_from(["row", "row", "row", "garbage", "not-object"]))
    if kind == "garbage":
        # (a file holds UTF-8: surrogates reach the reader only as JSON escapes, below)
        text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
        return draw(text.filter(
            lambda t: "\n" not in t and "\r" not in t and t.strip() != ""))
    if kind == "not-object":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                         st.text(max_size=10))))
    row = altered(draw, {**GOOD, "event_id": f"e{index}", "session_id": f"s{index}"},
                  fields=4, values=ANY_VALUE)
    if draw(st.booleans()):
        row[draw(st.text(min_size=1, max_size=8))] = draw(ANY_VALUE)  # an extra column
    return json.dumps(row)


def lines_strategy() -> st.SearchStrategy[list[str]]:
    return st.integers(min_value=1, max_value=25).flatmap(
        lambda n: st.tuples(*[log_line(i) for i in range(n)]).map(list))


def check(path: Path, expected_rows: int) -> None:
    raw = read_new_rows([path], {}).frame
    assert len(raw) == expected_rows  # the reader drops nothing
    result = validate_logs(raw, DOC_IDS, set(), max_query_chars=1000, max_position=1000)
    assert len(result.accepted) + len(result.quarantined) == expected_rows
    assert result.input_rows == expected_rows
    if len(result.quarantined):
        assert (result.quarantined["reason"].str.len() > 0).all()
        assert set(result.quarantined["reason_code"]) <= set(result.reason_counts)
    assert sum(result.reason_counts.values()) == len(result.quarantined)


# CI: the same 30 examples per test every run (a new bug is found by a deep search,
# not by chance in someone else's CI). EMBEDLOOP_FUZZ_EXAMPLES=1000: a random, deeper one.
DEEP = os.environ.get("EMBEDLOOP_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(DEEP or 30), derandomize=DEEP is None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(lines=lines_strategy())
def test_ndjson_lines_of_any_shape(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        check(path, len(lines))
        same_rows_natively(path)


def same_rows_natively(path: Path, column_map: dict[str, str] | None = None) -> None:
    """The rows Arrow reads (native.py) come out exactly as the Python reader, which
    is the definition, reads them: same values, same types, same line numbers."""
    read = read_csv if path.suffix == ".csv" else read_ndjson
    native = read(path, 0, 0, column_map or {})
    python = read(path, 0, 0, column_map or {}, native=False)
    pd.testing.assert_frame_equal(native.frame, python.frame)
    for column in LOG_FIELDS:  # 1 == 1.0 == True for pandas: the types must match too
        assert list(map(type, native.frame[column])) == list(map(type, python.frame[column]))
    assert (native.consumed, native.lines) == (python.consumed, python.lines)
    assert native.frame.attrs == python.frame.attrs


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
NATIVE_LIKE = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63),
                        st.sampled_from([0, -0, 10**15, 10**16, 1.0, -1.5, 1e20]), TEXT,
                        st.sampled_from(["\u00e9t\u00e9", "\ud83d\ude00", "a\"b", "\x00",
                                         "2026-03-01T12:00:05Z", "true", "1"]))


@st.composite
def native_like_line(draw: st.DrawFn) -> str:
    """Rows mostly as a tracker writes them: every field of its type, with now and then a
    value of another type, a field missing or twice, another key, odd spacing, an escape
    or a line that is not an object, which the native path must leave to Python."""
    row = altered(draw, {**GOOD}, fields=2, values=NATIVE_LIKE)
    if draw(st.integers(0, 4)) == 0:
        row[draw(st.sampled_from(["extra", "user_agent", "ts "]))] = draw(NATIVE_LIKE)
    text = json.dumps(row, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(", ", ": "), (",", ":"),
                                                       (" , ", " : ")])))
    twist = draw(st.integers(0, 9))
    if twist == 0:
        text = text[:-1] + ', "query": "again"}'  # a key twice
    elif twist == 1:
        text = "  " + text + " \r"
    elif twist == 2:
        text = text.replace("1200", "NaN")
    elif twist == 3:
        text = draw(st.sampled_from(["", "   ", "[1, 2]", "{}", "null", '{"query": "\\ud800"}']))
    return text


@FUZZ
@given(lines=st.lists(native_like_line(), min_size=1, max_size=40),
       mapped=st.booleans(), newline_at_end=st.booleans())
def test_the_native_ndjson_path_reads_what_the_python_path_reads(
        lines: list[str], mapped: bool, newline_at_end: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.jsonl"
        text = "\n".join(lines) + ("\n" if newline_at_end else "")
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        same_rows_natively(path, {"user_agent": "team"} if mapped else None)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries(
    {f: st.one_of(st.just(str(GOOD[f])), st.text(max_size=30)) for f in LOG_FIELDS}),
    min_size=1, max_size=25))
def test_csv_cells_of_any_text(rows: list[dict[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        check(path, len(rows))
        same_rows_natively(path)


CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='",\r\n'),
               max_size=12)


@FUZZ
@given(lines=st.lists(st.tuples(st.lists(CELL, min_size=1, max_size=12), st.binary(max_size=3)),
                      min_size=1, max_size=25))
def test_csv_rows_of_any_width_and_bytes(lines: list[tuple[list[str], bytes]]) -> None:
    """Damaged CSV: any field count, any bytes appended (not UTF-8 ones too): every
    non-blank line is a row, accepted or quarantined with its reason."""
    body = [",".join(cells).encode() + junk.replace(b"\n", b"").replace(b"\r", b"")
            .replace(b'"', b"").replace(b",", b"") for cells, junk in lines]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.csv"
        path.write_bytes(",".join(LOG_FIELDS).encode() + b"\n" + b"\n".join(body) + b"\n")
        check(path, sum(1 for line in body if line))
        same_rows_natively(path)


ODD_CELL = st.one_of(CELL, st.sampled_from(['"a,b"', '"say ""hi"""', 'a"b', '"ab"c', '""', '" "',
                                            '"é"', "x\r", '"multi\nline"']))


@FUZZ
@given(rows=st.lists(st.lists(ODD_CELL, min_size=len(LOG_FIELDS), max_size=len(LOG_FIELDS)),
                     min_size=1, max_size=25),
       crlf=st.booleans(), newline_at_end=st.booleans())
def test_the_native_csv_path_reads_what_the_python_path_reads(
        rows: list[list[str]], crlf: bool, newline_at_end: bool) -> None:
    """Quoting in every odd place, CRLF, a missing last newline: the rows Arrow reads are
    the rows Python's csv module reads, or Arrow leaves the file to it."""
    end = "\r\n" if crlf else "\n"
    text = end.join([",".join(LOG_FIELDS), *(",".join(r) for r in rows)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.csv"
        path.write_text(text + (end if newline_at_end else ""), encoding="utf-8", newline="")
        same_rows_natively(path)


CONVERTERS = {"event_id": log_schema._as_id, "query": log_schema._as_text,
              "position": log_schema._as_position, "clicked": log_schema._as_clicked,
              "dwell_ms": log_schema._as_number, "team": log_schema._as_text}


@FUZZ
@given(values=st.lists(ANY_VALUE, min_size=1, max_size=30))
def test_column_wise_typing_equals_the_per_value_definition(values: list[Any]) -> None:
    """to_typed_frame converts whole columns at once for speed; each value must come out
    exactly as its scalar converter (the definition) says."""
    raw = pd.DataFrame({f: [GOOD[f]] * len(values) for f in LOG_FIELDS}, dtype=object)
    raw["source"], raw["line"], raw["parse_error"] = "x", range(1, len(values) + 1), None
    for field, convert in CONVERTERS.items():
        frame = raw.copy()
        frame[field] = pd.Series(values, dtype=object)
        typed = log_schema.to_typed_frame(frame)
        for i, value in enumerate(values):
            want, problem = convert(value)
            got = typed.at[i, field]
            if want is None or (isinstance(want, float) and want != want):
                assert pd.isna(got), (field, value, got)
            else:
                assert got == want, (field, value, got, want)
            errors = typed.at[i, "type_errors"]
            assert (errors == f"{field}: {problem}") if problem else errors is None, (
                field, value, errors, problem)
