from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from embedloop.errors import InputError
from embedloop.ingest.logs import discover_log_files
from embedloop.ingest.schema import to_typed_frame
from tests.helpers import read_new_rows

ROW = {"event_id": "e1", "ts": "2026-03-01T12:00:05Z", "session_id": "s1", "query": "q",
       "doc_id": "d1", "position": 1, "clicked": True, "dwell_ms": 4000}



def rows(n: int, start: int = 0) -> list[dict]:
    return [{**ROW, "event_id": f"e{start + i}"} for i in range(n)]


def write_ndjson(path: Path, records: list[dict], mode: str = "w") -> None:
    with path.open(mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_ndjson_appended_rows_are_read_once(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    write_ndjson(log, rows(3))
    first = read_new_rows([log], {})
    assert list(first.frame["event_id"]) == ["e0", "e1", "e2"]
    assert read_new_rows([log], first.cursors).frame.empty  # nothing new: nothing read

    write_ndjson(log, rows(2, start=3), mode="a")
    second = read_new_rows([log], first.cursors)
    assert list(second.frame["event_id"]) == ["e3", "e4"]
    assert list(second.frame["line"]) == [4, 5]  # line numbers continue across runs


def test_a_line_still_being_written_waits_for_the_next_run(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    log.write_text(json.dumps(ROW) + "\n" + '{"event_id": "e2", "ts": "2026-')
    first = read_new_rows([log], {})
    assert list(first.frame["event_id"]) == ["e1"]
    assert any("incomplete" in note for note in first.notes)
    with log.open("a") as f:
        f.write('03-01T12:00:05Z"}\n')
    assert list(read_new_rows([log], first.cursors).frame["event_id"]) == ["e2"]


def test_unparseable_lines_become_rows_not_silence(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    surrogate = json.dumps({**ROW, "query": "heart \ud800 attack"})  # escaped in JSON
    log.write_text(json.dumps(ROW) + "\nnot json at all\n[1, 2]\n\xff\n" + surrogate + "\n")
    frame = read_new_rows([log], {}).frame
    assert len(frame) == 5
    assert list(frame["parse_error"].isna()) == [True, False, False, False, False]
    assert "not valid Unicode" in frame["parse_error"][4]


def test_lines_the_fast_parser_refuses_are_judged_by_json(tmp_path: Path) -> None:
    """orjson refuses NaN literals and integers past 64 bits; those lines are still
    records (their values are then judged by validation), not parse errors."""
    log = tmp_path / "a.jsonl"
    log.write_text(json.dumps({**ROW, "dwell_ms": float("nan")}) + "\n"  # NaN literal
                   + json.dumps({**ROW, "event_id": "e2", "position": 10**30}) + "\n\n  \n")
    frame = read_new_rows([log], {}).frame
    assert len(frame) == 2  # blank lines are not rows
    assert frame["parse_error"].isna().all()
    assert frame["position"][1] == 10**30


def test_rewritten_file_is_read_again_and_noted(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    write_ndjson(log, rows(3))
    first = read_new_rows([log], {})
    write_ndjson(log, rows(1, start=100))  # truncated and rewritten
    again = read_new_rows([log], first.cursors)
    assert list(again.frame["event_id"]) == ["e100"]
    assert any("rewritten" in note for note in again.notes)


def test_csv_and_parquet_with_a_column_map(tmp_path: Path) -> None:
    renamed = [{("q" if k == "query" else k): v for k, v in r.items()} for r in rows(2)]
    pd.DataFrame(renamed).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(renamed).to_parquet(tmp_path / "b.parquet")
    files = discover_log_files(tmp_path)
    new = read_new_rows(files, {}, {"q": "query"})
    assert len(new.frame) == 4 and set(new.frame["query"]) == {"q"}
    typed = to_typed_frame(new.frame)
    assert typed["type_errors"].isna().all(), typed["type_errors"].tolist()
    assert list(typed["clicked"]) == [True] * 4  # "True" from CSV, bool from Parquet
    assert read_new_rows(files, new.cursors).frame.empty

    with (tmp_path / "a.csv").open("a") as f:
        f.write("e9,2026-03-01T12:00:05Z,s1,q,d1,2,false,\n")
    appended = read_new_rows(files, new.cursors, {"q": "query"})
    assert list(appended.frame["event_id"]) == ["e9"]


CSV_HEADER = "event_id,ts,session_id,query,doc_id,position,clicked,dwell_ms\n"
CSV_ROW = "e{},2026-03-01T12:00:05Z,s1,q,d1,1,true,4000\n"


def test_csv_damage_is_quarantined_row_by_row_with_its_line(tmp_path: Path) -> None:
    log = tmp_path / "a.csv"
    log.write_bytes((CSV_HEADER + CSV_ROW.format(1)
                     + "e2,2026-03-01T12:00:05Z,s1,q,d1,1,true,4000,extra,more\n"
                     + "e3,2026-03-01T12:00:05Z,s1\n").encode()
                    + b"e4,2026-03-01T12:00:05Z,s1,caf\xe9,d1,1,true,4000\n"
                    + CSV_ROW.format(5).encode())
    new = read_new_rows([log], {})
    assert not new.unreadable
    frame = new.frame.set_index("line")
    assert list(frame.index) == [2, 3, 4, 5, 6]  # file lines: the header is line 1
    assert frame.at[3, "parse_error"] == "expected 8 fields (as in the header), found 10"
    assert frame.at[4, "parse_error"] == "expected 8 fields (as in the header), found 3"
    assert frame.at[5, "parse_error"] == "bytes that are not valid UTF-8"
    assert frame["parse_error"].isna().sum() == 2 and list(frame.loc[[2, 6], "event_id"]) == [
        "e1", "e5"]
    typed = to_typed_frame(new.frame)
    assert typed["type_errors"].iloc[1] == ("row: expected 8 fields (as in the header), "
                                            "found 10")

    with log.open("a") as f:  # rows appended after damage are read once, numbered on
        f.write(CSV_ROW.format(6))
    appended = read_new_rows([log], new.cursors)
    assert list(appended.frame["event_id"]) == ["e6"] and list(appended.frame["line"]) == [7]


def test_an_empty_csv_is_noted_once_and_read_when_it_fills(tmp_path: Path) -> None:
    log = tmp_path / "a.csv"
    log.write_bytes(b"")
    first = read_new_rows([log], {})
    assert first.frame.empty and not first.unreadable
    assert any("empty file" in note for note in first.notes)
    again = read_new_rows([log], first.cursors)
    assert again.frame.empty and not again.notes
    log.write_text(CSV_HEADER + CSV_ROW.format(1))
    filled = read_new_rows([log], {**first.cursors, **again.cursors})
    assert list(filled.frame["event_id"]) == ["e1"] and not filled.notes


def test_an_unreadable_file_is_skipped_named_and_not_retried_until_it_changes(
        tmp_path: Path) -> None:
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    good = tmp_path / "a.jsonl"
    write_ndjson(good, rows(2))
    first = read_new_rows([good, bad], {})
    assert list(first.frame["event_id"]) == ["e0", "e1"]  # the other files are read
    assert list(first.unreadable) == ["b.parquet"]
    assert "not a readable Parquet file" in first.unreadable["b.parquet"]
    assert "\n" not in first.unreadable["b.parquet"]
    again = read_new_rows([good, bad], first.cursors)
    assert not again.unreadable and again.frame.empty  # unchanged: not tried again
    pd.DataFrame(rows(1, start=7)).to_parquet(bad)  # repaired: read
    repaired = read_new_rows([good, bad], {**first.cursors, **again.cursors})
    assert list(repaired.frame["event_id"]) == ["e7"] and not repaired.unreadable


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no log files found"):
        discover_log_files(str(tmp_path / "nowhere" / "*.jsonl"))


@pytest.mark.parametrize("field, value, problem", [
    ("position", "first", "position: not an integer ('first')"),
    ("position", True, "position: not an integer (bool)"),
    ("position", "²", "position: not an integer ('²')"),  # isdigit() says yes; int() no
    ("clicked", "maybe", "clicked: not a boolean ('maybe')"),
    ("ts", "not a timestamp", "ts: not an ISO-8601 timestamp ('not a timestamp')"),
    ("ts", 12345, "ts: not a timestamp (int)"),
    ("query", 42, "query: not a string (int)"),
    ("dwell_ms", "long", "dwell_ms: not a number ('long')"),
])
def test_wrong_types_are_named(field: str, value: object, problem: str) -> None:
    raw = pd.DataFrame([{**ROW, field: value, "source": "x", "line": 1, "parse_error": None}],
                       dtype=object)
    typed = to_typed_frame(raw)
    assert typed.at[0, "type_errors"] == problem
    assert typed.at[0, "bad_fields"] == {field}


@pytest.mark.parametrize("field, value, typed_value", [
    ("position", "3", 3.0), ("position", 3.0, 3.0), ("clicked", "false", False),
    # too large for a float: out of range (the range checks quarantine it), not a crash
    ("position", 10**400, float("inf")), ("position", "9" * 5000, float("inf")),
    ("dwell_ms", -(10**400), float("-inf")),
    ("clicked", 1, True), ("doc_id", 17, "17"), ("dwell_ms", None, None),
])
def test_lenient_but_exact_coercions(field: str, value: object, typed_value: object) -> None:
    raw = pd.DataFrame([{**ROW, field: value, "source": "x", "line": 1, "parse_error": None}],
                       dtype=object)
    typed = to_typed_frame(raw)
    assert typed.at[0, "type_errors"] is None
    got = typed.at[0, field]
    assert (pd.isna(got) and typed_value is None) or got == typed_value


def test_a_file_with_other_column_names_says_how_to_map_them(tmp_path: Path) -> None:
    renamed = [{"id": r["event_id"], "time": r["ts"], "sid": r["session_id"], "q": r["query"],
                "doc": r["doc_id"], "rank": r["position"], "click": r["clicked"]}
               for r in rows(2)]
    pd.DataFrame(renamed).to_csv(tmp_path / "a.csv", index=False)
    [note] = read_new_rows([tmp_path / "a.csv"], {}).notes
    assert note.startswith("a.csv: none of the expected fields (event_id, ts, ")
    assert "its columns are id, time, sid, q, doc, rank, click" in note
    assert '[embedloop.column_map] id = "event_id"' in note

    write_ndjson(tmp_path / "b.jsonl", [{("q" if k == "query" else k): v for k, v in r.items()}
                                        for r in rows(2)])
    [note] = read_new_rows([tmp_path / "b.jsonl"], {}).notes
    assert note.startswith("b.jsonl: no row has query; its columns are event_id, ts, ")
    assert read_new_rows([tmp_path / "b.jsonl"], {}, {"q": "query"}).notes == []
