"""Real Great Expectations over real (simulated) interaction logs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from embedloop.demo import simulate_logs
from embedloop.errors import CorpusInvalid
from embedloop.ingest.corpus import load_corpus
from embedloop.ingest.logs import discover_log_files
from embedloop.ingest.validation import (
    check_batch,
    load_suite_json,
    quarantine_whole_batch,
    validate_logs,
    with_parameters,
)
from tests.helpers import read_new_rows

LIMITS = {"max_query_chars": 1000, "max_position": 1000}


def test_every_malformed_row_of_the_simulator_is_caught(sim_logs: Path,
                                                       tiny_beir: Path) -> None:
    """Batches validated in order, as runs would: each manifest id is quarantined (or,
    for a duplicated event id, its later copy is quarantined as a duplicate)."""
    doc_ids = set(load_corpus(tiny_beir / "corpus.jsonl")["doc_id"])
    manifest = json.loads((sim_logs / "manifest.json").read_text())
    seen: set[str] = set()
    quarantined, total_in, total_out = [], 0, 0
    for path in discover_log_files(sim_logs):
        raw = read_new_rows([path], {}).frame
        result = validate_logs(raw, doc_ids, seen, **LIMITS)
        assert len(result.accepted) + len(result.quarantined) == len(raw)
        total_in += len(raw)
        total_out += len(result.accepted) + len(result.quarantined)
        seen |= set(result.accepted["event_id"])
        quarantined.append(result.quarantined)
    q = pd.concat(quarantined)
    assert total_in == total_out == sum(b["rows"] for b in manifest["batches"])
    missed = set(manifest["malformed_event_ids"]) - set(q["event_id"])
    assert not missed, f"malformed rows accepted: {sorted(missed)[:5]}"
    assert (q["reason"].str.len() > 0).all()
    # nothing well-formed was quarantined: every quarantined id is in the manifest
    assert set(q["event_id"]) <= set(manifest["malformed_event_ids"])


def test_demo_logs_malformed_rows_are_caught() -> None:
    docs = [{"_id": f"doc{i}", "title": f"doc{i}", "text": f"text about topic {i} " * 5,
             "summary": f"summary number {i} of something"} for i in range(40)]
    rows, malformed = simulate_logs(docs, n_queries=30, malformed_rate=0.2, seed=3)
    raw = pd.DataFrame(rows).assign(source="demo", line=range(1, len(rows) + 1),
                                    parse_error=None).astype(object)
    result = validate_logs(raw, {d["_id"] for d in docs}, set(), **LIMITS)
    assert set(malformed) <= set(result.quarantined["event_id"])
    assert len(result.accepted) + len(result.quarantined) == len(rows)


def test_reasons_name_the_problem_once(tiny_beir: Path) -> None:
    good = {"event_id": "e1", "ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q",
            "doc_id": "d1", "position": 1, "clicked": True, "dwell_ms": 10}
    bad = [
        {**good, "event_id": "e2", "position": "first"},
        {**good, "event_id": "e3", "ts": "2999-01-01T00:00:00Z"},
        {**good, "event_id": "e4", "query": "x" * 5000},
        {**good, "event_id": "e5", "query": "a\x00b"},
        {**good, "event_id": "e6", "doc_id": "nope"},
        {**good, "event_id": "e7", "dwell_ms": -50},
        {**good, "event_id": "e1"},
        {**good, "event_id": "e8", "query": None, "doc_id": None},
    ]
    raw = pd.DataFrame([good, *bad]).assign(source="f", line=range(1, 10),
                                            parse_error=None).astype(object)
    result = validate_logs(raw, {"d1"}, set(), **LIMITS)
    reasons = dict(zip(result.quarantined["line"], result.quarantined["reason"], strict=True))
    assert list(result.accepted["event_id"]) == ["e1"]
    assert reasons == {
        2: "position: not an integer ('first')",
        3: "ts is in the future",
        4: "query is longer than max_query_chars (1000 characters)",
        5: "query contains control characters",
        6: "doc_id is not in the corpus",
        7: "dwell_ms is negative or over a day",
        8: "event_id was already seen (duplicate event)",
        9: "query is missing; doc_id is missing",
    }


def test_the_team_of_an_interleaved_list_is_an_optional_field() -> None:
    """Rows of an interleaved session carry the team that placed the result; rows of
    other sessions carry none. Both are accepted; a team that is not text is not."""
    rows = [{"event_id": f"e{i}", "ts": "2026-03-01T12:00:05Z", "session_id": "s",
             "query": "q", "doc_id": "d1", "position": i, "clicked": False, **team}
            for i, team in enumerate([{"team": "candidate"}, {"team": "champion"}, {},
                                      {"team": 5}], start=1)]
    raw = pd.DataFrame(rows).assign(source="f", line=range(1, 5), parse_error=None)
    result = validate_logs(raw.astype(object), {"d1"}, set(), **LIMITS)
    assert list(result.accepted["team"]) == ["candidate", "champion", None]
    assert list(result.quarantined["reason"]) == ["team: not a string (int)"]


def test_mostly_broken_batch_fails_the_batch_check_and_is_kept_whole() -> None:
    good = {"event_id": "e", "ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q",
            "doc_id": "d1", "position": 1, "clicked": True, "dwell_ms": 10}
    rows = [{**good, "event_id": f"e{i}", "doc_id": "d1" if i % 3 == 0 else "nope"}
            for i in range(30)]
    raw = pd.DataFrame(rows).assign(source="f", line=range(1, 31),
                                    parse_error=None).astype(object)
    result = validate_logs(raw, {"d1"}, set(), **LIMITS)
    verdict = check_batch(result, max_quarantine_share=0.2, min_clicks=5)
    assert not verdict.ok
    assert "20 of 30 rows (67%) are malformed" in verdict.problems[0]
    kept = pd.concat(quarantine_whole_batch(result, "; ".join(verdict.problems)))
    assert len(kept) == 30
    assert (kept["reason_code"] == "batch_rejected").sum() == 10


def test_distinct_value_validation_reports_rows_not_values() -> None:
    """GX sees each column's distinct values once; the report counts rows. A clean column
    passes (its nulls are not invented), and a bad value shared by many rows fails
    every one of them."""
    good = {"event_id": "e", "ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q",
            "doc_id": "d1", "position": 1, "clicked": True, "dwell_ms": 10}
    rows = [{**good, "event_id": f"e{i}", "position": 0 if i < 4 else 1} for i in range(10)]
    raw = pd.DataFrame(rows).assign(source="f", line=range(1, 11),
                                    parse_error=None).astype(object)
    result = validate_logs(raw, {"d1"}, set(), **LIMITS)
    assert list(result.quarantined["line"]) == [1, 2, 3, 4]
    assert set(result.quarantined["reason_code"]) == {"bad_position"}
    report = {r["expectation_config"]["meta"]["code"]: r for r in result.outcome.result["results"]}
    assert report["bad_position"]["rows_failing"] == 4
    assert report["missing_event_id"]["success"] and report["missing_event_id"]["rows_failing"] == 0


def test_too_few_clicks_is_a_batch_problem() -> None:
    good = {"event_id": "e", "ts": "2026-03-01T12:00:05Z", "session_id": "s", "query": "q",
            "doc_id": "d1", "position": 1, "clicked": False, "dwell_ms": None}
    raw = pd.DataFrame([{**good, "event_id": f"e{i}"} for i in range(10)]).assign(
        source="f", line=range(1, 11), parse_error=None).astype(object)
    verdict = check_batch(validate_logs(raw, {"d1"}, set(), **LIMITS),
                          max_quarantine_share=0.2, min_clicks=3)
    assert verdict.problems == ["only 0 valid clicks, fewer than the 3 needed to train"]


def test_a_suites_thresholds_come_from_the_settings_and_an_unknown_one_is_named() -> None:
    suite = load_suite_json("interaction_batch")
    resolved = with_parameters(suite["expectations"], {"max_quarantine_share": 0.2,
                                                       "min_clicks": 3}, suite["name"])
    assert [e["kwargs"] for e in resolved] == [
        {"column": "quarantined_share", "max_value": 0.2},
        {"column": "accepted_clicks", "min_value": 3}]
    with pytest.raises(KeyError, match="'min_clicks', which is not one of"):
        with_parameters(suite["expectations"], {"max_quarantine_share": 0.2}, suite["name"])


@pytest.mark.parametrize("lines, message", [
    (['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'], "appears more than once"),
    (['{"_id": "a", "text": "x"}', '{"_id": null, "text": "y"}'], "document id is missing"),
    (['{"_id": "a", "title": "", "text": "  "}'], "document has no title or text"),
])
def test_corpus_problems_stop_with_the_offending_ids(tmp_path: Path, lines: list[str],
                                                     message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusInvalid, match=message):
        load_corpus(path)


def test_long_text_is_a_query_and_a_pasted_blob_is_not() -> None:
    """RAG queries are paragraphs: the default limit takes them and stops only blobs."""
    from embedloop.config import Settings

    limits = {"max_query_chars": Settings().max_query_chars, "max_position": 1000}
    paragraph = ("Does a deficiency of vitamin B6 raise homocysteine in adults,\n"
                 "and is the effect seen in patients with renal failure as well? ") * 12
    good = {"event_id": "e1", "ts": "2026-03-01T12:00:05Z", "session_id": "s",
            "query": paragraph, "doc_id": "d1", "position": 1, "clicked": True,
            "dwell_ms": 10}
    raw = pd.DataFrame([good, {**good, "event_id": "e2", "query": "x" * 20000}]).assign(
        source="f", line=[1, 2], parse_error=None).astype(object)
    result = validate_logs(raw, {"d1"}, set(), **limits)
    assert len(paragraph) >= 1500 and list(result.accepted["event_id"]) == ["e1"]
    assert list(result.quarantined["reason"]) == [
        f"query is longer than max_query_chars ({limits['max_query_chars']} characters)"]


def test_cjk_queries_are_measured_in_characters_not_bytes() -> None:
    """Ten Chinese characters are 30 UTF-8 bytes: a 10-character limit takes them."""
    good = {"event_id": "e1", "ts": "2026-03-01T12:00:05Z", "session_id": "s",
            "query": "北京的天气怎么样今天呢", "doc_id": "d1", "position": 1, "clicked": True,
            "dwell_ms": 10}
    assert len(good["query"]) == 11
    raw = pd.DataFrame([{**good, "query": good["query"][:10]}, {**good, "event_id": "e2"},
                        {**good, "event_id": "e3", "query": "\u3000\u3000"}]).assign(
        source="f", line=[1, 2, 3], parse_error=None).astype(object)
    result = validate_logs(raw, {"d1"}, set(), max_query_chars=10, max_position=1000)
    assert list(result.accepted["event_id"]) == ["e1"]
    assert list(result.quarantined["reason_code"]) == ["overlong_query", "empty_query"]


def test_a_chinese_beir_demo_simulates_users_who_find_what_they_asked_for(
        tmp_path: Path) -> None:
    """`embedloop demo --beir`: real Chinese questions and paragraphs (cmrc2018 from
    ../shared), ranked by a BM25 that reads CJK as characters and bigrams; the rows
    validate like any others."""
    from embedloop.demo import write_demo_data

    beir = Path(__file__).resolve().parents[2].parent / "shared/benchmarks/cmrc2018"
    manifest = write_demo_data(tmp_path, beir=beir)
    rows = [json.loads(line) for line in (tmp_path / "logs/week-1.jsonl").open(encoding="utf-8")]
    assert manifest["rows"] == len(rows) and manifest["clicks"] > 1000
    queries = {r["query"] for r in rows if isinstance(r.get("query"), str)}
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in q) for q in queries) > 600
    raw = pd.DataFrame(rows).assign(source="demo", line=range(1, len(rows) + 1),
                                    parse_error=None).astype(object)
    doc_ids = set(load_corpus(tmp_path / "corpus.jsonl")["doc_id"])
    result = validate_logs(raw, doc_ids, set(), **LIMITS)
    assert set(result.quarantined["event_id"].dropna()) <= set(manifest["malformed_event_ids"])
    assert len(result.accepted) + len(result.quarantined) == len(rows)
