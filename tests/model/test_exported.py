"""Exported encoders (ONNX Runtime, OpenVINO) against the torch model they came from,
with the real MiniLM: the same vectors in fp32, close ones with int8 weights, and both
routes of a query-side model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from embedloop.encoding import encode, load_model

pytest.importorskip("onnxruntime")

from embedloop.exported import load_exported  # noqa: E402
from embedloop.training import Towers, asymmetric  # noqa: E402

TEXTS = ["protein folding in the cell", "Aspirin lowers the risk of a second heart attack.",
         "a", "Mitochondria " * 60]


@pytest.mark.parametrize("backend, at_least", [("onnx", 0.9999), ("onnx-int8", 0.9),
                                               ("openvino", 0.999)])
def test_an_exported_model_encodes_as_the_torch_model_does(
        backend: str, at_least: float, base_model_path: str, tmp_path: Path) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = load_model(base_model_path, "cpu", max_seq_length=64)
    exported = load_exported(model, base_model_path, backend, tmp_path)
    want = encode(model, TEXTS, role="document")
    got = encode(exported, TEXTS, role="document", batch_size=3)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(got * want, axis=1)) >= at_least
    # exported once, then read from the cache
    assert len(list(tmp_path.rglob("*.onnx"))) == (2 if backend == "onnx-int8" else 1)
    load_exported(model, base_model_path, backend, tmp_path)
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
    exported = load_exported(model, str(tmp_path / "model"), "onnx", tmp_path / "cache")
    for role in ("query", "document"):
        want = encode(model, TEXTS, role=role)
        got = encode(exported, TEXTS, role=role)
        assert np.min(np.sum(got * want, axis=1)) >= 0.9999, role
    assert not np.allclose(encode(exported, TEXTS, role="query"),
                           encode(exported, TEXTS, role="document"))
