"""Query-side training with the real MiniLM: the query encoder learns, the document
encoder (and so every vector in the index) stays exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedloop.config import TrainingConfig
from embedloop.learn.training import Towers, TrainingFailed, fine_tune, fine_tune_query_side
from embedloop.models.encoding import encode, load_model

CFG = TrainingConfig(max_steps=24, batch_size=8, learning_rate=1e-4, precision="fp32")


@pytest.fixture(scope="module")
def clicks(tiny_beir: Path) -> pd.DataFrame:
    docs = {d["_id"]: f"{d['title']} {d['text']}" for d in map(json.loads, (
        tiny_beir / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (
        tiny_beir / "queries.jsonl").read_text().splitlines())}
    rows = [line.split("\t") for line in (tiny_beir / "qrels" / "train.tsv").read_text()
            .splitlines()[1:]][:24]
    ids = sorted(docs)
    return pd.DataFrame([{"qkey": q, "anchor": queries[q], "doc_id": d, "positive": docs[d],
                          # a hard negative: some other document of the corpus
                          "negative_id": ids[(ids.index(d) + 7) % len(ids)],
                          "weight": 1.0} for q, d, _ in rows])


@pytest.fixture(scope="module")
def trained(clicks: pd.DataFrame, base_model_path: str,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list[str], np.ndarray]:
    base = load_model(base_model_path, "cpu", max_seq_length=64)
    texts = dict(zip(clicks["doc_id"], clicks["positive"], strict=True))
    ids = sorted(set(clicks["doc_id"]))
    vectors = encode(base, [texts[d] for d in ids], role="document")
    result = fine_tune_query_side(base_model_path, clicks, ids, vectors,
                                  tmp_path_factory.mktemp("query-side"), CFG, device="cpu",
                                  max_seq_length=64, show_progress=False)
    assert result.side == "query" and result.steps == 24 and np.isfinite(result.train_loss)
    return load_model(str(result.path), "cpu", max_seq_length=64), ids, vectors


def test_documents_keep_their_vectors_and_queries_move_towards_clicks(
        trained: tuple, clicks: pd.DataFrame, base_model_path: str) -> None:
    candidate, ids, vectors = trained
    texts = dict(zip(clicks["doc_id"], clicks["positive"], strict=True))
    # the saved, reloaded candidate encodes documents exactly as the index holds them
    again = encode(candidate, [texts[d] for d in ids], role="document")
    np.testing.assert_allclose(again, vectors, atol=1e-6)

    base = load_model(base_model_path, "cpu", max_seq_length=64)
    row = {d: i for i, d in enumerate(ids)}
    clicked = vectors[[row[d] for d in clicks["doc_id"]]]
    before = encode(base, list(clicks["anchor"]), role="query")
    after = encode(candidate, list(clicks["anchor"]), role="query")
    assert float(np.mean(np.sum(after * clicked, axis=1))) > \
        float(np.mean(np.sum(before * clicked, axis=1))) + 0.01


def test_a_full_fine_tune_of_an_asymmetric_model_trains_both_routes(
        trained: tuple, clicks: pd.DataFrame, tmp_path: Path) -> None:
    """The champion of a query-side cycle is asymmetric; the slower full cycle trains
    both of its routes, each on its own side of the pairs."""
    candidate, _, _ = trained
    folder = tmp_path / "champion"
    candidate.save(str(folder))
    towers = Towers.of(candidate)

    def flat(modules: list) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])

    result = fine_tune(str(folder), clicks, tmp_path, CFG, device="cpu", max_seq_length=64,
                       show_progress=False)
    tuned = Towers.of(result.model)
    assert result.side == "full" and tuned.query is not tuned.document
    assert not torch.equal(flat(towers.query), flat(tuned.query))
    assert not torch.equal(flat(towers.document), flat(tuned.document))


def test_a_diverged_query_side_run_is_a_failure_not_a_candidate(
        clicks: pd.DataFrame, base_model_path: str, tmp_path: Path) -> None:
    ids = sorted(set(clicks["doc_id"]))
    vectors = np.eye(len(ids), 384, dtype=np.float32)
    with pytest.raises(TrainingFailed, match="training diverged"):
        fine_tune_query_side(base_model_path, clicks, ids, vectors, tmp_path,
                             TrainingConfig(max_steps=3, batch_size=8, learning_rate=1e9,
                                            precision="fp32"),
                             device="cpu", max_seq_length=64, show_progress=False)


def test_clicked_documents_missing_from_the_index_are_refused(
        clicks: pd.DataFrame, base_model_path: str, tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="not in the index"):
        fine_tune_query_side(base_model_path, clicks, ["elsewhere"],
                             np.zeros((1, 384), np.float32), tmp_path, CFG, device="cpu")


def test_a_mix_moves_the_query_encoder_part_way_and_leaves_documents_alone(
        trained: tuple, clicks: pd.DataFrame, base_model_path: str) -> None:
    """WiSE-FT on the query route: weight 0 is the parent, 1 the fine-tune, and between
    them the query vectors lie between; documents encode as the index holds them."""
    from embedloop.learn.training import mix_by_score, mix_query_side

    candidate, ids, vectors = trained
    parent = load_model(base_model_path, "cpu", max_seq_length=64)
    texts = dict(zip(clicks["doc_id"], clicks["positive"], strict=True))
    queries = list(clicks["anchor"][:8])

    def queries_of(model: object) -> np.ndarray:
        return encode(model, queries, role="query")

    np.testing.assert_allclose(queries_of(mix_query_side(parent, candidate, 0.0)),
                               queries_of(parent), atol=1e-5)
    np.testing.assert_allclose(queries_of(mix_query_side(parent, candidate, 1.0)),
                               queries_of(candidate), atol=1e-5)
    half = mix_query_side(parent, candidate, 0.5)
    moved = np.linalg.norm(queries_of(candidate) - queries_of(parent), axis=1)
    part = np.linalg.norm(queries_of(half) - queries_of(parent), axis=1)
    assert (part < moved).all() and (part > 0.2 * moved).all()
    np.testing.assert_allclose(encode(half, [texts[d] for d in ids], role="document"),
                               vectors, atol=1e-6)

    # the tune queries' scores pick the share: here the further from the parent, the
    # worse every query ranks, so the mix falls back to the parent itself
    def score(model: object) -> np.ndarray:
        return -np.linalg.norm(queries_of(model) - queries_of(parent), axis=1)

    mixed, mixing = mix_by_score(parent, candidate, [0.5, 1.0], score)
    assert list(mixing.scores) == [0.0, 0.5, 1.0] and mixing.weight == 0.0
    np.testing.assert_allclose(queries_of(mixed), queries_of(parent), atol=1e-5)
