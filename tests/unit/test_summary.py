"""The run summary is made from the typed results the stages returned, as far as the run
got: a run that failed part-way still reports everything its finished stages found."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from embedloop.ingest.logs import Ingested
from embedloop.learn.pairs import MinedNegatives, TrainingData
from embedloop.learn.training import FineTuneResult, Mixing
from embedloop.report.summary import JudgedAgainst, RunStart, StageResults, summarize

START = RunStart("schedule", "nightly", incumbent_version="3", mlflow_run_id="abc")


def test_a_run_that_stopped_after_ingesting_reports_what_it_read() -> None:
    read = Ingested(rows=120, notes=["a.jsonl was rewritten"],
                    unreadable={"b.parquet": "not Parquet"})
    summary = summarize(START, StageResults([read]), "failed", "OSError: disk full",
                        champion="3", live_index="v0003", stage_seconds={"ingest": 1.5},
                        notes=["repaired the live pointer"])
    assert (summary.trigger, summary.outcome, summary.decision_reason) == (
        "schedule", "failed", "OSError: disk full")
    assert summary.rows_ingested == 120 and summary.rows_accepted == 0
    assert summary.unreadable_files == {"b.parquet": "not Parquet"}
    assert summary.incumbent_version == summary.champion_version == "3"
    assert summary.candidate_version is None and summary.pairs == 0 and summary.offline == ""
    assert summary.notes == ["repaired the live pointer", "a.jsonl was rewritten"]
    assert summary.stage_seconds == {"ingest": 1.5} and summary.mlflow_run_id == "abc"


def test_a_run_that_failed_after_its_fine_tune_still_reports_the_training() -> None:
    """Say the tracking server went down while the evaluation was logged: the pairs, the
    mined negatives and the fine-tune were done, and the failed run's record says so."""
    pairs = pd.DataFrame({"qkey": ["q", "r"], "doc_id": ["a", "b"]})
    data = TrainingData(pairs, {"p": {"a": 1.0}}, train_queries=2, eval_queries=1, pool_new=1)
    tuned = FineTuneResult(None, Path("ckpt"), 3, 0.5, 1.0, "fp32", "cpu", side="query",
                           mixing=Mixing(0.4, {}, {}, 12, "the unmixed fine-tune lost"))
    done = StageResults([Ingested(rows=10), JudgedAgainst("3"), data, MinedNegatives(2, 1),
                         tuned])
    summary = summarize(START, done, "failed", "MlflowException: down", champion="3",
                        live_index="v0003", stage_seconds={})
    assert (summary.pairs, summary.train_queries, summary.eval_queries) == (2, 2, 1)
    assert (summary.mined_negatives, summary.near_duplicate_negatives) == (2, 1)
    assert (summary.train_side, summary.mixing_weight) == ("query", 0.4)
    assert summary.judged_against == "3" and summary.candidate == {}


def test_a_run_with_no_results_yet_is_all_zeros_but_says_why() -> None:
    summary = summarize(START, StageResults(), "failed", "boom", champion=None,
                        live_index=None, stage_seconds={})
    assert summary.rows_ingested == 0 and summary.online == [] and summary.rolled_back == []
    assert dict(summary.rows())["why"] == "boom"
