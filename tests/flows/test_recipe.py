"""The recipe through the real flow (Prefect, MLflow, FAISS, MiniLM): a query-side
candidate is the mix of parent and fine-tune that ranks the tune queries best, so a
fine-tune that wrecks the query encoder falls back towards the parent, and MLflow shows
what was chosen, why, and what the candidate learned from."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedloop.config import load_settings
from embedloop.production.champion import Production
from tests.helpers import first_week_logs, make_home

pytestmark = pytest.mark.usefixtures("prefect_harness")
WEIGHTS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_a_wrecked_fine_tune_is_mixed_back_and_the_run_shows_why(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path) -> None:
    from embedloop.flows.retrain import retrain

    logs = first_week_logs(tmp_path, sim_logs)
    # A learning rate 500 times the default: three steps leave the query encoder useless.
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl",
                       mixing_weights=WEIGHTS, canary_share=0.0,
                       training={"max_steps": 3, "batch_size": 8, "precision": "fp32",
                                 "query_learning_rate": 0.05})
    summary = retrain(reason="test", config_file=str(config))

    assert summary["train_side"] == "query"
    assert summary["mixing_weight"] is not None and summary["mixing_weight"] <= 0.4
    client = Production.from_settings(load_settings(config)).registry.client
    run = client.get_run(summary["mlflow_run_id"])
    params = run.data.params
    assert float(params["recipe.mixing_weight"]) == summary["mixing_weight"]
    assert int(params["recipe.tune_queries"]) >= 5 and params["recipe.side"] == "query"
    assert "tune queries" in run.data.tags["recipe.why"]
    curve = client.get_metric_history(run.info.run_id, "recipe.tune_ndcg_at_10")
    by_weight = {m.step: m.value for m in curve}
    assert sorted(by_weight) == [0, 20, 40, 60, 80, 100]
    p_worse = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                   "recipe.tune_p_worse")}
    # the wrecked fine-tune ranks far worse than the parent; the candidate keeps the
    # largest share that ranks no worse (a loss within the 0.01 margin, not credible)
    assert by_weight[100] < by_weight[0] - 0.1
    chosen = round(summary["mixing_weight"] * 100)

    def holds(step: int) -> bool:
        return by_weight[step] >= by_weight[0] - 0.01 and p_worse[step] >= 0.05

    assert holds(chosen) and not any(holds(step) for step in by_weight if step > chosen)
    # ... and the candidate holds its ground on the pool, which it never saw
    assert summary["candidate"]["ndcg@10"] >= summary["incumbent"]["ndcg@10"] - 0.05

    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                for i in run.inputs.dataset_inputs}
    assert set(contexts.values()) == {"training", "tuning", "evaluation"}
    assert contexts["tune queries"] == "tuning"
    assert any(name.startswith("clicks 2026-") for name in contexts)
    written = Path(client.download_artifacts(run.info.run_id, "summary.md", str(tmp_path)))
    assert f"| mix | {summary['mixing_weight']:g} of the fine-tune" in \
        written.read_text()
