"""The whole pipeline with every real part: Prefect (test harness), MLflow (sqlite in a
temp dir), Great Expectations, FAISS and MiniLM, on a 200-document slice of SciFact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from embedloop.config import load_settings
from embedloop.errors import BatchRejected
from embedloop.index.base import open_index_store
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.ingest.ledger import load_ledger
from embedloop.models.exported import backend_available
from embedloop.production.registry import CHAMPION, PREVIOUS, Registry
from tests.helpers import FAST, make_home, search

pytestmark = pytest.mark.usefixtures("prefect_harness")

def run(config: Path, reason: str = "test", trigger: str = "manual") -> dict[str, Any]:
    from embedloop.flows.retrain import retrain

    return retrain(reason=reason, trigger=trigger, config_file=str(config))


def registry_for(config: Path) -> Registry:
    s = load_settings(config)
    return Registry(s.resolved_tracking_uri, s.model_name, s.artifact_root)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory, sim_logs: Path,
             tiny_beir: Path) -> tuple[Path, dict[str, Any]]:
    """First run on the first week of logs. min_improvement=-1 and no significance test
    make the gate accept any candidate, so this exercises the promotion and re-index path
    of a full fine-tune itself (the query-side path: test_query_side.py; the gate's own
    decisions are unit-tested, and the tie case below).

    Beside the week's logs lie damaged files as real log folders hold them: a 0-byte CSV,
    a CSV row with extra fields, and a file that is not Parquet at all."""
    root = tmp_path_factory.mktemp("promoted")
    logs = root / "logs"
    logs.mkdir()
    (logs / "week.jsonl").write_bytes((sim_logs / "batch-001.jsonl").read_bytes())
    (logs / "empty.csv").write_bytes(b"")
    doc = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[0])["_id"]
    (logs / "ragged.csv").write_text(
        "event_id,ts,session_id,query,doc_id,position,clicked,dwell_ms\n"
        f"c1,2026-03-01T12:00:05Z,cs1,aspirin,{doc},1,true,3000\n"
        f"c2,2026-03-01T12:00:06Z,cs1,aspirin,{doc},1,true,3000,oops,oops\n")
    (logs / "export.parquet").write_bytes(b"PAR1 truncated upload")
    config = make_home(root / "home", logs, tiny_beir / "corpus.jsonl", min_improvement=-1.0,
                       significance_alpha=1.0, harm_margin=1.0, train_side="full",
                       encode_backend="auto")  # the default: exported where it pays
    return config, run(config, reason="first week")


def test_first_run_bootstraps_trains_and_promotes(promoted: tuple[Path, dict]) -> None:
    config, summary = promoted
    settings = load_settings(config)
    registry = registry_for(config)
    assert summary["outcome"] == "promoted"
    assert summary["rows_ingested"] == summary["rows_accepted"] + summary["rows_quarantined"]
    assert summary["rows_quarantined"] == sum(summary["quarantined_by_reason"].values()) > 0
    assert summary["pairs"] > 0 and summary["eval_queries"] >= 5
    assert set(summary["candidate"]) == set(summary["incumbent"]) >= {"ndcg@10", "recall@100"}

    # v1 is the base model (bootstrap), v2 the candidate, now champion; v1 is previous
    assert registry.version_for_alias(CHAMPION) == "2" == summary["champion_version"]
    assert registry.version_for_alias(PREVIOUS) == "1"
    store = FaissIndexStore(settings.index_dir)
    live = store.load()
    assert live.manifest.version == summary["live_index"] == "v0002"
    assert live.manifest.model_version == "2" and live.manifest.n_docs == 200
    assert store.latest_for_model(settings.model_name, "1") == "v0001"  # kept for rollback

    run_data = registry.client.get_run(summary["mlflow_run_id"]).data
    assert run_data.tags["reason"] == "first week" and run_data.tags["trigger"] == "manual"
    assert run_data.tags["decision"] == "promoted"
    assert {"candidate.ndcg_at_10", "incumbent.ndcg_at_10", "rows_quarantined",
            "pool.queries", "pool.new_queries", "pool.condensed_candidate", "pool.harm_bound",
            "pool.p_better", "sanity.spread"} <= set(run_data.metrics)
    assert run_data.tags["offline_decision"] == "promote"
    # the judge's record of this candidate's offline look, made before it was acted on
    record = json.loads((settings.state_dir / "evidence.json").read_text())
    assert record[summary["mlflow_run_id"]]["offline"][0]["findings"]["pool"] == "superior"
    assert summary["evidence"]["pool.alpha"] == 1.0 and summary["offline"] == "promote"
    assert summary["recent"]["queries"] >= 1
    assert summary["eval_queries"] == run_data.metrics["pool.queries"] >= 5
    artifacts = {a.path for d in ("eval", "validation") for a in
                 registry.client.list_artifacts(summary["mlflow_run_id"], d)}
    assert {"eval/per_query.json", "eval/comparison.png", "eval/champion_history.png",
            "validation/report.html",
            "validation/interaction_log.json"} <= artifacts
    # the MLflow UI opens the experiment on its training runs, and says what they are
    experiment = registry.client.get_experiment(registry.experiment_id())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`champion` alias" in experiment.tags["mlflow.note.content"]
    assert "`previous` is what `embedloop rollback` returns to" in (
        registry.client.get_registered_model(settings.model_name).description)

    ledger = load_ledger(settings.state_dir)
    assert len(ledger.batches) == 1
    batch = settings.state_dir / "batches" / ledger.batches[0]
    assert len(pd.read_parquet(batch / "accepted.parquet")) == summary["rows_accepted"]
    assert len(pd.read_parquet(batch / "quarantine.parquet")) == summary["rows_quarantined"]


def test_damaged_files_do_not_stop_the_run(promoted: tuple[Path, dict]) -> None:
    """The bad CSV row is quarantined with its line, the bad file is named and skipped,
    and the good rows of both CSV and NDJSON were trained on."""
    config, summary = promoted
    assert list(summary["unreadable_files"]) == ["export.parquet"]
    settings = load_settings(config)
    batch = settings.state_dir / "batches" / load_ledger(settings.state_dir).batches[0]
    quarantined = pd.read_parquet(batch / "quarantine.parquet")
    ragged = quarantined[quarantined["source"] == "ragged.csv"]
    assert list(ragged["line"]) == [3]
    assert "expected 8 fields (as in the header), found 10" in ragged["reason"].iloc[0]
    accepted = pd.read_parquet(batch / "accepted.parquet")
    assert "c1" in set(accepted["event_id"]) and set(accepted["source"]) == {"week.jsonl",
                                                                              "ragged.csv"}


def test_search_uses_the_live_index_with_the_champion(promoted: tuple[Path, dict],
                                                      tiny_beir: Path) -> None:
    config, _ = promoted
    first_doc = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[0])
    settings = load_settings(config)
    hits = search(settings, first_doc["title"], k=5)
    assert len(hits) == 5
    assert hits[0].doc_id == first_doc["_id"]  # a document's own title finds it
    # encode_backend "auto" on a CPU: both indexes were encoded through OpenVINO, and say
    # so, so that queries against them are encoded the same way
    manifests = [open_index_store(settings.index_place).manifest(v) for v in ("v0001", "v0002")]
    want = {"openvino"} if backend_available("openvino") else {"bf16", "fp32"}
    assert {m.precision for m in manifests} <= want, [m.precision for m in manifests]


def test_rerun_on_the_same_input_ingests_nothing(promoted: tuple[Path, dict]) -> None:
    config, _ = promoted
    again = run(config, reason="rerun")
    assert again["outcome"] == "no-new-data"
    assert again["rows_ingested"] == 0
    assert not again["unreadable_files"]  # the damaged file is not tried again unchanged
    assert registry_for(config).version_for_alias(CHAMPION) == "2"
    assert len(load_ledger(load_settings(config).state_dir).batches) == 1


def test_rollback_restores_previous_champion_and_its_index(promoted: tuple[Path, dict]) -> None:
    from embedloop.flows.rollback import rollback

    config, _ = promoted
    result = rollback(reason="test rollback", config_file=str(config))
    assert (result["from"], result["to"], result["live_index"]) == ("2", "1", "v0001")
    registry = registry_for(config)
    assert registry.version_for_alias(CHAMPION) == "1"
    assert registry.version_for_alias(PREVIOUS) is None
    settings = load_settings(config)
    assert FaissIndexStore(settings.index_dir).load().manifest.model_version == "1"
    assert search(settings, "protein", k=3)  # the restored pair is consistent

    again = rollback(reason="again", config_file=str(config), return_state=True)
    assert again.is_completed() and again.name == "Refused"  # declined, not failed
    assert "first champion" in again.result()["decision_reason"]
    assert registry.version_for_alias(CHAMPION) == "1"  # a refused rollback changed nothing


def test_candidate_no_better_is_not_promoted(tmp_path: Path, sim_logs: Path,
                                             tiny_beir: Path) -> None:
    """Learning rate 0: the (query-side) candidate equals the incumbent, so it ties and
    must not win; it ranks every pool query as the champion does, so there is nothing for
    users to judge either: no canary."""
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl",
                       training={**FAST["training"], "query_learning_rate": 0.0})
    summary = run(config)
    registry = registry_for(config)
    assert summary["outcome"] == "kept"
    assert "exactly as the incumbent does" in summary["decision_reason"]
    assert summary["offline"] == "keep" and summary["canary_started"] is None
    assert summary["candidate"]["ndcg@10"] == pytest.approx(summary["incumbent"]["ndcg@10"],
                                                            abs=1e-6)
    assert registry.version_for_alias(CHAMPION) == "1"  # unchanged
    assert registry.version_info("2").tags["decision"] == "not promoted"  # but recorded
    assert FaissIndexStore(load_settings(config).index_dir).live_version() == "v0001"


def test_mostly_broken_batch_stops_before_training(tmp_path: Path, sim_logs: Path,
                                                   tiny_beir: Path) -> None:
    rows = [json.loads(x) for x in (sim_logs / "batch-001.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        if i % 2:
            row["doc_id"] = "not-in-corpus"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl")

    with pytest.raises(BatchRejected, match=r"rows \(5\d%\) are malformed"):
        run(config)
    settings = load_settings(config)
    registry = registry_for(config)
    assert registry.version_for_alias(CHAMPION) == "1"
    assert FaissIndexStore(settings.index_dir).live_version() == "v0001"
    ledger = load_ledger(settings.state_dir)
    kept = pd.read_parquet(settings.state_dir / "batches" / ledger.batches[0] /
                           "quarantine.parquet")
    assert len(kept) == len(rows)  # the whole batch is kept, nothing dropped
    assert list((settings.state_dir / "work").glob("*")) == []  # no staged rows left behind
    failed = registry.recent_runs(1)[0]
    assert failed.info.status == "FAILED" and failed.data.tags["decision"] == "rejected"


def test_training_past_its_time_limit_fails_the_run_and_changes_nothing(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path) -> None:
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl", train_timeout_s=3,
                       training={**FAST["training"], "max_steps": 500})
    with pytest.raises(Exception, match="(?i)timed out|timeout"):
        run(config)
    settings = load_settings(config)
    registry = registry_for(config)
    assert registry.version_for_alias(CHAMPION) == "1"
    assert FaissIndexStore(settings.index_dir).live_version() == "v0001"
    assert load_ledger(settings.state_dir).batches == []  # the rows will be read again
    failed = registry.recent_runs(1)[0]
    assert failed.info.status == "FAILED" and failed.data.tags["decision"] == "failed"


def test_a_retrain_refused_by_the_lock_ends_refused_not_failed(tmp_path: Path, sim_logs: Path,
                                                               tiny_beir: Path) -> None:
    """Through Prefect (a deployment's route): the run ends in a Completed state named
    Refused, so the failure hook and its alert do not fire."""
    from embedloop.flows.retrain import retrain
    from embedloop.production.lock import exclusive

    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl")
    with exclusive(load_settings(config).state_dir, "retrain (schedule: nightly schedule)"):
        state = retrain(reason="manual", config_file=str(config), return_state=True)
    assert state.is_completed() and state.name == "Refused"
    assert "retrain (schedule: nightly schedule) (pid" in state.result()["decision_reason"]
    assert registry_for(config).version_for_alias(CHAMPION) is None  # nothing happened
