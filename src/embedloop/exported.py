"""Encoding through an exported graph: ONNX Runtime (fp32, or int8 weights) or OpenVINO.

Training always runs in torch; what is exported is a trained model's encoders, for the
work that only encodes: indexing the corpus and answering queries. Each route of the
model (one for a symmetric model; `query` and `document` for a query-side one) is a
Transformer, a Pooling and (usually) a Normalize module: the Transformer is exported
with `torch.onnx.export`, pooling and normalization run in numpy. A model of any other
shape is refused, and encoding stays in torch.

Exports are cached per model folder under `cache_dir`, keyed by a digest of the weights,
so a registered version is exported once however often it is loaded.

`ExportedModel` answers `encode_query` / `encode_document` like a SentenceTransformer,
so `encoding.encode` takes either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedloop.errors import CheckpointError

# "torch" runs the model itself; the rest run an export of it.
ENCODE_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for weights in sorted(folder.rglob("model.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}"
                      .encode())
    return digest.hexdigest()[:16]


class _Route:
    """One route's tokenizer, exported transformer and pooling."""

    def __init__(self, modules: list[Any], graph: Path, backend: str) -> None:
        transformer, pooling = modules[0], modules[1]
        self.tokenizer = transformer.tokenizer
        self.max_length = transformer.max_seq_length
        self.pooling = pooling.pooling_mode
        self.normalize = len(modules) > 2
        if backend == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(str(graph), "CPU")
            self._run = lambda feeds: compiled(feeds)[0]
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(graph), options,
                                           providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            self._run = lambda feeds: session.run(
                None, {k: v for k, v in feeds.items() if k in names})[0]

    def encode(self, texts: list[str], batch_size: int, normalize: bool) -> np.ndarray:
        out = []
        # longest first: batches of similar length pad less (sentence-transformers' trick)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            feeds = self.tokenizer(batch, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in feeds.items() if k in INPUTS}
            if "token_type_ids" not in feeds:
                feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            hidden = np.asarray(self._run(feeds), dtype=np.float32)
            if self.pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = feeds["attention_mask"][..., None].astype(np.float32)
                vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out.append(vectors)
        vectors = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
        if normalize or self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        result = np.empty_like(vectors)
        result[order] = vectors
        return result


class ExportedModel:
    """A model's encoders, exported: `encode_query` / `encode_document` as in
    sentence-transformers (the subset `encoding.encode` uses)."""

    device = "cpu"

    def __init__(self, routes: dict[str, _Route], dim: int, backend: str) -> None:
        self.routes, self.dim, self.backend = routes, dim, backend

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def _encode(self, role: str, texts: Sequence[str], batch_size: int = 64,
                normalize_embeddings: bool = False, **_: Any) -> np.ndarray:
        route = self.routes.get(role) or self.routes["all"]
        return route.encode(list(texts), batch_size, normalize_embeddings)

    def encode_query(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self._encode("query", texts, **kwargs)

    def encode_document(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self._encode("document", texts, **kwargs)


def _route_modules(model: Any) -> dict[str, list[Any]]:
    from sentence_transformers.base.modules import Router

    modules = list(model.children())
    if modules and isinstance(modules[0], Router):
        tail = modules[1:]
        return {name: [*route, *tail] for name, route in modules[0].sub_modules.items()}
    return {"all": modules}


def _check_shape(name: str, modules: list[Any]) -> None:
    kinds = [type(m).__name__ for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise CheckpointError(f"cannot export route {name!r} ({' -> '.join(kinds)}): only "
                              f"Transformer -> Pooling [-> Normalize] is supported; use "
                              f"encode_backend = \"torch\"")
    if modules[1].pooling_mode not in ("mean", "cls"):
        raise CheckpointError(f"cannot export route {name!r}: only mean or CLS pooling, not "
                              f"{modules[1].pooling_mode!r}")


def _export(transformer: Any, target: Path, quantize: bool) -> None:
    """The transformer as an ONNX graph at `target` (int8 weights if `quantize`), written
    under a temporary name and renamed, so a cut-off export is never used."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = target.with_name(target.stem.removesuffix("-int8") + ".onnx")
    if not fp32.exists():
        sample = transformer.tokenizer(["an example", "another, longer example"],
                                       padding=True, return_tensors="pt")
        sample.setdefault("token_type_ids", torch.zeros_like(sample["input_ids"]))
        partial = fp32.with_suffix(f".{os.getpid()}.partial")
        wrapped = LastHiddenState(transformer.auto_model.float().cpu()).eval()
        with torch.no_grad():
            torch.onnx.export(wrapped, tuple(sample[k] for k in INPUTS), str(partial),
                              input_names=list(INPUTS), output_names=["last_hidden_state"],
                              dynamic_axes={k: {0: "batch", 1: "tokens"}
                                            for k in (*INPUTS, "last_hidden_state")},
                              opset_version=17, dynamo=False)
        os.replace(partial, fp32)
    if quantize and not target.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = target.with_suffix(f".{os.getpid()}.partial")
        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8,
                         per_channel=True)
        os.replace(partial, target)


def load_exported(model: Any, model_path: str, backend: str, cache_dir: Path) -> ExportedModel:
    """`model` (loaded from `model_path`) with its routes exported for `backend`."""
    if backend not in ENCODE_BACKENDS[1:]:
        raise ValueError(f"backend must be one of {ENCODE_BACKENDS[1:]}, not {backend!r}")
    folder = cache_dir / _weights_digest(Path(model_path))
    routes = {}
    for name, modules in _route_modules(model).items():
        _check_shape(name, modules)
        quantize = backend == "onnx-int8"
        graph = folder / f"{name}{'-int8' if quantize else ''}.onnx"
        _export(modules[0], graph, quantize)
        routes[name] = _Route(modules, graph, backend)
    return ExportedModel(routes, model.get_sentence_embedding_dimension() or 0, backend)
