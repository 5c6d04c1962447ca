"""The run summary is made from the typed results the stages returned, as far as the run
got: a run that failed after ingesting still reports its rows."""

from __future__ import annotations

from embedloop.ingest.logs import Ingested
from embedloop.report.summary import RunStart, summarize


def test_a_run_that_stopped_after_ingesting_reports_what_it_read() -> None:
    start = RunStart("schedule", "nightly", incumbent_version="3", mlflow_run_id="abc")
    read = Ingested(rows=120, notes=["a.jsonl was rewritten"],
                    unreadable={"b.parquet": "not Parquet"})
    summary = summarize(start, [read], "failed", "OSError: disk full", champion="3",
                        live_index="v0003", stage_seconds={"ingest": 1.5},
                        notes=["repaired the live pointer"])
    assert (summary.trigger, summary.outcome, summary.decision_reason) == (
        "schedule", "failed", "OSError: disk full")
    assert summary.rows_ingested == 120 and summary.rows_accepted == 0
    assert summary.unreadable_files == {"b.parquet": "not Parquet"}
    assert summary.incumbent_version == summary.champion_version == "3"
    assert summary.candidate_version is None and summary.pairs == 0 and summary.offline == ""
    assert summary.notes == ["repaired the live pointer", "a.jsonl was rewritten"]
    assert summary.stage_seconds == {"ingest": 1.5} and summary.mlflow_run_id == "abc"


def test_a_run_with_no_results_yet_is_all_zeros_but_says_why() -> None:
    summary = summarize(RunStart("manual", "on-call", "1", "r"), [], "failed", "boom",
                        champion=None, live_index=None, stage_seconds={})
    assert summary.rows_ingested == 0 and summary.online == [] and summary.rolled_back == []
    assert "decision" in dict(summary.rows()) and dict(summary.rows())["why"] == "boom"
