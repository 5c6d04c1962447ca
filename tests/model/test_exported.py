"""Exported encoders (ONNX Runtime, OpenVINO) against the torch model they came from,
with the real MiniLM: the same vectors in fp32, close ones with int8 weights, and both
routes of a query-side model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from embedloop.models.encoding import encode, load_model

pytest.importorskip("onnxruntime")

from embedloop.learn.training import Towers, asymmetric  # noqa: E402
from embedloop.models.exported import load_exported  # noqa: E402

TEXTS = ["protein folding in the cell", "Aspirin lowers the risk of a second heart attack.",
         "a", "Mitochondria " * 60]


@pytest.mark.parametrize("backend, at_least", [("onnx", 0.9999), ("onnx-int8", 0.9),
                                               ("openvino", 0.999)])
def test_an_exported_model_encodes_as_the_torch_model_does(
        backend: str, at_least: float, base_model_path: str, tmp_path: Path) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = load_model(base_model_path, "cpu", max_seq_length=64)
    exported = load_exported(model, backend, tmp_path)
    want = encode(model, TEXTS, role="document")
    got = encode(exported, TEXTS, role="document", batch_size=3)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(got * want, axis=1)) >= at_least
    # exported once, then read from the cache
    assert len(list(tmp_path.rglob("*.onnx"))) == (2 if backend == "onnx-int8" else 1)
    load_exported(model, backend, tmp_path)
    assert len(list(tmp_path.rglob("*.onnx"))) == (2 if backend == "onnx-int8" else 1)


def test_each_route_of_a_query_side_model_is_exported(base_model_path: str,
                                                      tmp_path: Path) -> None:
    import torch

    base = load_model(base_model_path, "cpu", max_seq_length=64)
    towers = Towers.of(base)
    query = copy.deepcopy(towers.query)
    with torch.no_grad():  # a query route that differs from the document route
        query[0].auto_model.embeddings.word_embeddings.weight.mul_(0.5)
    model = asymmetric(query, towers.document, [], "cpu")
    model.save(str(tmp_path / "model"))
    exported = load_exported(model, "onnx", tmp_path / "cache")
    for role in ("query", "document"):
        want = encode(model, TEXTS, role=role)
        got = encode(exported, TEXTS, role=role)
        assert np.min(np.sum(got * want, axis=1)) >= 0.9999, role
    assert not np.allclose(encode(exported, TEXTS, role="query"),
                           encode(exported, TEXTS, role="document"))


def test_encode_with_an_exported_backend_exports_each_route_once_on_first_use(
        base_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What indexing and search do when the encoder is "openvino": `encode` exports the
    route it needs, keyed by that route's weights, so a query-side candidate (new query
    route, the champion's document route) adds one export, not two."""
    pytest.importorskip("openvino")
    import torch

    monkeypatch.setenv("EMBEDLOOP_EXPORT_CACHE", str(tmp_path))
    champion = load_model(base_model_path, "cpu", max_seq_length=64)
    want = encode(champion, TEXTS, role="document")
    got = encode(champion, TEXTS, role="document", precision="openvino")
    assert np.min(np.sum(got * want, axis=1)) >= 0.999
    assert len(list(tmp_path.rglob("*.onnx"))) == 1

    towers = Towers.of(champion)
    query = copy.deepcopy(towers.query)
    with torch.no_grad():
        query[0].auto_model.embeddings.word_embeddings.weight.mul_(0.5)
    candidate = asymmetric(query, towers.document, [], "cpu")
    encode(candidate, TEXTS, role="document", precision="openvino")
    assert len(list(tmp_path.rglob("*.onnx"))) == 1  # the champion's document export
    got = encode(candidate, TEXTS, role="query", precision="openvino")
    assert len(list(tmp_path.rglob("*.onnx"))) == 2
    assert np.min(np.sum(got * encode(candidate, TEXTS, role="query"), axis=1)) >= 0.999


def test_an_exported_model_applies_the_models_prompts(base_model_path: str,
                                                      tmp_path: Path) -> None:
    """A model with prompts (e5's "query: ") gets them through an export as in torch."""
    model = load_model(base_model_path, "cpu", max_seq_length=64)
    model.prompts = {"query": "query: ", "passage": "passage: "}
    exported = load_exported(model, "onnx", tmp_path)
    for role in ("query", "document"):
        want = encode(model, TEXTS, role=role)
        assert np.min(np.sum(encode(exported, TEXTS, role=role) * want, axis=1)) >= 0.9999
    with_prompt = encode(exported, TEXTS, role="query")
    model.prompts = {}
    assert not np.allclose(encode(model, TEXTS, role="query"), with_prompt, atol=1e-3)
