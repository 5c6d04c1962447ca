"""The real MiniLM, a handful of steps: training changes the weights, lr=0 does not,
and fine-tuning on pairs pulls each query towards its clicked document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedloop.config import TrainingConfig
from embedloop.learn.training import TrainingFailed, fine_tune
from embedloop.models.encoding import encode, load_model


@pytest.fixture(scope="module")
def pairs(tiny_beir: Path) -> pd.DataFrame:
    docs = {d["_id"]: f"{d['title']} {d['text']}" for d in map(json.loads, (
        tiny_beir / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (
        tiny_beir / "queries.jsonl").read_text().splitlines())}
    rows = [line.split("\t") for line in (tiny_beir / "qrels" / "train.tsv").read_text()
            .splitlines()[1:]]
    return pd.DataFrame([{"anchor": queries[q], "positive": docs[d]} for q, d, _ in rows[:24]])


def weights(model: object) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


@pytest.mark.parametrize("learning_rate, changed", [(5e-5, True), (0.0, False)])
def test_training_changes_weights_only_when_it_should(
        pairs: pd.DataFrame, base_model_path: str, tmp_path: Path,
        learning_rate: float, changed: bool, capfd: pytest.CaptureFixture[str]) -> None:
    before = weights(load_model(base_model_path, "cpu"))
    result = fine_tune(base_model_path, pairs, tmp_path,
                       TrainingConfig(max_steps=3, batch_size=8, learning_rate=learning_rate,
                                      precision="fp32"),
                       device="cpu", max_seq_length=64, show_progress=False)
    after = weights(load_model(str(result.path), "cpu"))
    assert result.steps == 3 and np.isfinite(result.train_loss)
    assert (not torch.equal(before, after)) is changed
    assert "widget" not in capfd.readouterr().err  # the Hub's model card: not ours to print


def test_fine_tuning_pulls_queries_towards_clicked_documents(
        pairs: pd.DataFrame, base_model_path: str, tmp_path: Path) -> None:
    def similarity(path: str) -> float:
        model = load_model(path, "cpu", max_seq_length=64)
        q = encode(model, list(pairs["anchor"]), role="query")
        d = encode(model, list(pairs["positive"]), role="document")
        return float(np.mean(np.sum(q * d, axis=1)))

    result = fine_tune(base_model_path, pairs, tmp_path,
                       TrainingConfig(max_steps=6, batch_size=8, learning_rate=1e-4,
                                      precision="fp32"),
                       device="cpu", max_seq_length=64, show_progress=False)
    assert similarity(str(result.path)) > similarity(base_model_path) + 0.01


def test_too_few_pairs_is_refused(base_model_path: str, tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="at least 2"):
        fine_tune(base_model_path, pd.DataFrame({"anchor": ["a"], "positive": ["b"]}), tmp_path,
                  TrainingConfig(), device="cpu")


def test_pickle_format_weights_are_refused(base_model_path: str, tmp_path: Path) -> None:
    """A checkpoint whose weights are a pickle (pytorch_model.bin) could run code when
    loaded: only safetensors are read."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from embedloop.errors import CheckpointError
    from embedloop.models.encoding import load_model

    folder = tmp_path / "model"
    shutil.copytree(base_model_path, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot load the model"):
        load_model(str(folder), "cpu")


def test_relevance_weighted_loss_is_the_stock_loss_with_equal_weights(
        base_model_path: str) -> None:
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from embedloop.learn.training import weighted_ranking_loss

    model = load_model(base_model_path, "cpu")
    weighted, stock = weighted_ranking_loss(model), MultipleNegativesRankingLoss(model)
    torch.manual_seed(0)
    anchors, positives, negatives = (torch.nn.functional.normalize(torch.randn(6, 384), dim=1)
                                     for _ in range(3))
    embeddings = [anchors, positives, negatives]
    ones = torch.ones(6)
    expected = stock.compute_loss_from_embeddings(embeddings, ones)
    assert weighted.compute_loss_from_embeddings(embeddings, ones) == pytest.approx(
        float(expected), rel=1e-5)
    assert weighted.compute_loss_from_embeddings(embeddings, 0.5 * ones) == pytest.approx(
        float(expected), rel=1e-5)  # only relative weights matter
    # a pair weighted 0 drops out: the loss is the mean over the other anchors' terms
    only_first = torch.tensor([1.0, 0, 0, 0, 0, 0])
    first_term = torch.nn.functional.cross_entropy(
        stock.similarity_fct(anchors, torch.cat([positives, negatives]))[:1] * stock.scale,
        torch.tensor([0]))
    assert weighted.compute_loss_from_embeddings(embeddings, only_first) == pytest.approx(
        float(first_term), rel=1e-5)
