"""The fast path of log reading is taken where it should be: the fuzz tests prove it reads
what the Python path reads, these that it is not silently left unused."""

from __future__ import annotations

import json

from embedloop.ingest.native import native_csv_rows, native_ndjson_rows, ndjson_keys, split_lines
from embedloop.ingest.schema import LOG_FIELDS

ROW = {"event_id": "e1", "ts": "2026-03-01T12:00:05Z", "session_id": "s1",
       "query": "heart attack, aspirin \"low dose\" é 心脏", "doc_id": "d1", "position": 3,
       "clicked": True, "dwell_ms": None}


def test_tracker_lines_are_read_by_arrow_and_odd_ones_left_to_python() -> None:
    odd = [{**ROW, "position": "3"}, {**ROW, "dwell_ms": 1.5}, {**ROW, "clicked": 1}]
    lines = [json.dumps(r, ensure_ascii=a) for r in [ROW, {**ROW, "team": "candidate"}]
             for a in (True, False)]
    text = "\n".join(lines + [json.dumps(r) for r in odd] + ["not json", ""]) + "\n"
    data = split_lines(text.encode())
    keys, extra = ndjson_keys({}, [ROW])
    mask, table = native_ndjson_rows(data, keys, extra)
    assert mask.tolist() == [True] * 4 + [False] * 5
    assert table.column("query").to_pylist() == [ROW["query"]] * 4
    assert table.column("position").to_pylist() == [3] * 4
    assert table.column("team").to_pylist() == [None, None, "candidate", "candidate"]


def test_a_regular_csv_is_read_by_arrow_and_an_irregular_one_is_not() -> None:
    header = ",".join(LOG_FIELDS)
    row = 'e1,2026-03-01T12:00:05Z,s1,"heart attack, aspirin",d1,3,true,,'
    regular = f"{header}\n{row}\n{row}\n".encode()
    table = native_csv_rows(regular, 0)
    assert table is not None and table.num_rows == 2
    assert table.column("query").to_pylist() == ["heart attack, aspirin"] * 2
    assert native_csv_rows(regular, 1).num_rows == 1  # resumes after the rows read before
    for irregular in (f"{header}\n{row}\n\n{row}\n", f"{header}\n{row},extra\n",
                      f"{header}\n{row.replace('heart attack', 'heart' + chr(10) + 'attack')}\n"):
        assert native_csv_rows(irregular.encode(), 0) is None
