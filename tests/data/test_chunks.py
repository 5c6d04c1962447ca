"""A batch read and validated in chunks gets exactly the verdicts of the same batch
read and validated whole: real simulator logs in all three formats, chunks of a few
rows, a duplicate event id split across chunks, and a CSV that turns irregular part
way through."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from embedloop.ingest.corpus import load_corpus
from embedloop.ingest.logs import iter_new_rows
from embedloop.ingest.validation import (
    ACCEPTED_SCHEMA,
    EarlierIds,
    validate_in_chunks,
    validate_logs,
)
from tests.helpers import read_new_rows

LIMITS = {"max_query_chars": 1000, "max_position": 1000}
NOW = pd.Timestamp("2027-01-01", tz="UTC").to_pydatetime()


def as_format(ndjson: Path, kind: str) -> Path:
    frame = pd.read_json(ndjson, lines=True, dtype=False, convert_dates=False)
    frame = frame.astype(object).where(frame.notna(), None)
    path = ndjson.with_suffix(f".{kind}")
    if kind == "csv":
        frame.to_csv(path, index=False)
    else:  # every value a string: malformed rows mix types, which a column cannot hold
        frame.map(lambda v: None if v is None else str(v)).to_parquet(path, index=False)
    return path


def simulator_batch(sim_logs: Path, tmp_path: Path) -> Path:
    """The simulator's first batch, its well-formed JSON lines only (pandas must read
    them for the other formats), with the first row's event id repeated at the end."""
    lines = (sim_logs / "batch-001.jsonl").read_text().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    rows = [r for r in rows if isinstance(r, dict)]
    rows.append({**rows[-1], "event_id": rows[0]["event_id"]})  # a duplicate, chunks apart
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_chunked_validation_gives_the_verdicts_of_a_whole_batch(
        kind: str, sim_logs: Path, tiny_beir: Path, tmp_path: Path) -> None:
    ndjson = simulator_batch(sim_logs, tmp_path)
    path = ndjson if kind == "jsonl" else as_format(ndjson, kind)
    doc_ids = set(load_corpus(tiny_beir / "corpus.jsonl")["doc_id"])
    committed = {"not-a-real-id"}

    whole_rows = read_new_rows([path], {})
    whole = validate_logs(whole_rows.frame, doc_ids, committed, **LIMITS, now=NOW)

    chunks = list(iter_new_rows([path], {}, chunk_rows=200, chunk_bytes=2048))
    assert len(chunks) > 3
    chunked = validate_in_chunks((c.frame for c in chunks), doc_ids, committed,
                                 tmp_path / "rows", **LIMITS, now=NOW)

    assert chunks[-1].cursors == whole_rows.cursors
    assert (chunked.input_rows, chunked.accepted_count, chunked.quarantined_count,
            chunked.accepted_clicks) == (whole.input_rows, len(whole.accepted),
                                         len(whole.quarantined), whole.accepted_clicks)
    assert chunked.reason_counts == whole.reason_counts
    assert "duplicate_event_id" in chunked.reason_counts
    pd.testing.assert_frame_equal(chunked.quarantined, whole.quarantined,
                                  check_dtype=False)
    stored = pa.Table.from_pandas(whole.accepted, schema=ACCEPTED_SCHEMA,
                                  preserve_index=False).to_pandas()
    pd.testing.assert_frame_equal(chunked.accepted, stored)
    rows = {r["expectation_config"]["meta"]["code"]: r["rows_failing"]
            for r in chunked.outcome.result["results"]}
    assert rows == {r["expectation_config"]["meta"]["code"]: r["rows_failing"]
                    for r in whole.outcome.result["results"]}


def test_a_csv_that_turns_irregular_part_way_is_read_alike_in_chunks(tmp_path: Path) -> None:
    """Regular blocks go to Arrow; from the first irregular one (a quoted newline, a
    short row), Python's csv module reads the rest. Rows, line numbers and cursor match
    the whole-file read, also when resuming after rows read before."""
    header = "event_id,ts,session_id,query,doc_id,position,clicked\n"
    rows = [f"e{i},2026-03-01T12:00:00Z,s{i},query {i},d1,{i % 9 + 1},true\n"
            for i in range(300)]
    rows[200] = 'e200,2026-03-01T12:00:00Z,s200,"two\nlines",d1,1,true\n'
    rows[250] = "e250,short\n"
    path = tmp_path / "logs.csv"
    path.write_text(header + "".join(rows))
    for skip in (0, 120):
        from embedloop.ingest.readers import csv_chunks, read_csv

        whole = read_csv(path, skip, 0, {})
        parts = list(csv_chunks(path, skip, 0, {}, chunk_bytes=1500))
        assert len(parts) > 3
        chunked = pd.concat([p.frame for p in parts], ignore_index=True)
        pd.testing.assert_frame_equal(chunked, whole.frame)
        assert (parts[-1].consumed, parts[-1].lines) == (whole.consumed, whole.lines)


def test_earlier_ids_find_exactly_the_ids_added_before() -> None:
    earlier = EarlierIds()
    first = pd.Series([f"e{i}" for i in range(5000)] + [None], dtype=object).to_numpy()
    earlier.add(first)
    earlier.add(pd.Series(["x1", "x2"], dtype=object).to_numpy())
    asked = ["e0", "e4999", "x2", "e5000", "nope", "x3"]
    assert earlier.find(asked) == {"e0", "e4999", "x2"}
    assert EarlierIds().find(asked) == set()


def test_a_duplicate_id_across_chunks_is_also_checked_against_committed_batches(
        tmp_path: Path) -> None:
    """The lookup of committed ids still runs for every chunk."""
    good = {"ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q", "doc_id": "d1",
            "position": 1, "clicked": True}
    frames = [pd.DataFrame([{**good, "event_id": e}]).assign(source="f", line=i + 1,
                                                             parse_error=None).astype(object)
              for i, e in enumerate(["a", "old", "a", "b"])]
    asked: list[list[str]] = []

    def committed(ids: list[str]) -> set[str]:
        asked.append(ids)
        return {"old"} & set(ids)

    result = validate_in_chunks(frames, {"d1"}, committed, tmp_path, **LIMITS, now=NOW)
    assert list(result.accepted["event_id"]) == ["a", "b"]
    assert list(result.quarantined["reason_code"]) == ["duplicate_event_id"] * 2
    assert list(result.quarantined["line"]) == [2, 3]
    assert len(asked) == 4


def test_chunked_ingest_moves_the_cursor_once_per_file(sim_logs: Path) -> None:
    whole = read_new_rows([sim_logs / "batch-001.jsonl"], {})
    chunks = list(iter_new_rows([sim_logs / "batch-001.jsonl"], {}, chunk_rows=10,
                                chunk_bytes=1024))
    assert sum(len(c.frame) for c in chunks) == len(whole.frame)
    again = functools.reduce(lambda a, c: {**a, **c.cursors}, chunks, {})
    assert again == whole.cursors


def test_a_note_from_the_end_of_a_file_reaches_the_chunks(tmp_path: Path) -> None:
    """Said once, although the file's last chunk is read after earlier ones were handed on."""
    path = tmp_path / "logs.jsonl"
    good = {"ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q", "doc_id": "d1",
            "position": 1, "clicked": True}
    path.write_text("".join(json.dumps({**good, "event_id": f"e{i}"}) + "\n"
                            for i in range(50)) + '{"event_id": "half')
    chunks = list(iter_new_rows([path], {}, chunk_rows=5, chunk_bytes=1000))
    assert len(chunks) > 3
    assert [n for c in chunks for n in c.notes] == [
        "logs.jsonl: last line is incomplete; it will be read next run"]


def test_a_field_that_first_appears_in_a_later_chunk_is_not_called_missing(
        tmp_path: Path) -> None:
    """The hint for files written with other column names judges the whole file, not its
    first chunk: a field held only further on is there, one held nowhere is named."""
    path = tmp_path / "logs.jsonl"
    good = {"ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q", "doc_id": "d1",
            "position": 1, "clicked": True}
    lines = [{**good, "event_id": f"e{i}"} for i in range(60)]
    for line in lines[:40]:  # a tracker that began logging doc_id late
        del line["doc_id"]
    for line in lines:
        line["q"] = line.pop("query")  # and names the query "q" throughout
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    chunks = list(iter_new_rows([path], {}, chunk_rows=5, chunk_bytes=1000))
    assert len(chunks) > 3 and chunks[0].frame["doc_id"].isna().all()
    [note] = [n for c in chunks for n in c.notes]
    assert note.startswith("logs.jsonl: no row has query; its columns are ")
    assert '[embedloop.column_map] q = "query"' in note
