"""Encoding through an exported graph: ONNX Runtime (fp32, or int8 weights) or OpenVINO.

Training always runs in torch; what is exported is a trained model's encoders, for the
work that only encodes: indexing the corpus and answering queries. Each route of the
model (one for a symmetric model; `query` and `document` for a query-side one) is a
Transformer, a Pooling and (usually) a Normalize module: the Transformer is exported
with `torch.onnx.export`, pooling and normalization run in numpy. A model of any other
shape is refused, and encoding stays in torch.

A route is exported the first time it is used, into a cache keyed by a digest of its
weights (`export_cache_dir()`): a query-side candidate shares its document route's
export with the champion, and a registered version is exported once per machine however
often it is loaded.

`ExportedModel` answers `encode_query` / `encode_document` like a SentenceTransformer,
so `encoding.encode` takes either; `exported(model, backend)` gives the one for a loaded
model, made once per process.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedloop.errors import CheckpointError
from embedloop.models.base_models import role_prompt

# "torch" runs the model itself; the rest run an export of it.
ENCODE_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
EXPORTED = ENCODE_BACKENDS[1:]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def embedding_dimension(model: Any) -> int:
    """The model's vector size (sentence-transformers 6 renamed the method)."""
    get = (getattr(model, "get_embedding_dimension", None)
           or model.get_sentence_embedding_dimension)
    return int(get() or 0)


def export_cache_dir() -> Path:
    """EMBEDLOOP_EXPORT_CACHE, else the user's cache folder (exports depend on weights
    alone, so every deployment on a machine can share them)."""
    from embedloop.models.cache import cache_dir

    return cache_dir("exports", "EMBEDLOOP_EXPORT_CACHE")


def backend_available(backend: str) -> bool:
    module = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino"}
    return backend == "torch" or importlib.util.find_spec(module[backend]) is not None


def _weights_digest(module: Any) -> str:
    """What an export depends on: every weight's name, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().to("cpu").contiguous().view(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


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
            output = compiled.output(0)
            # a request per call: the service encodes from more than one thread, and one
            # compiled model's shared request is not safe to use concurrently
            self._run = lambda feeds: compiled.create_infer_request().infer(feeds)[output]
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(graph), options,
                                           providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            self._run = lambda feeds: session.run(
                None, {k: v for k, v in feeds.items() if k in names})[0]

    def encode(self, texts: list[str], batch_size: int, normalize: bool,
               show_progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        out = []
        # longest first: batches of similar length pad less (sentence-transformers' trick)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc="Batches",
                          disable=not show_progress):
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
    sentence-transformers (the subset `encoding.encode` uses). Each route is exported
    when it is first used."""

    device = "cpu"

    def __init__(self, model: Any, backend: str, cache_dir: Path | None = None) -> None:
        if backend not in EXPORTED:
            raise ValueError(f"backend must be one of {EXPORTED}, not {backend!r}")
        self.backend = backend
        self.cache_dir = cache_dir or export_cache_dir()
        self.modules = _route_modules(model)
        for name, modules in self.modules.items():
            _check_shape(name, modules)
        self.dim = embedding_dimension(model)
        self.prompts = {role: role_prompt(model, role) for role in ("query", "document")}
        self.routes: dict[str, _Route] = {}

    def get_embedding_dimension(self) -> int:
        return self.dim

    def route(self, role: str) -> _Route:
        name = role if role in self.modules else "all"
        if name not in self.routes:
            modules = self.modules[name]
            quantize = self.backend == "onnx-int8"
            graph = (self.cache_dir / _weights_digest(modules[0])
                     / f"model{'-int8' if quantize else ''}.onnx")
            new = not graph.exists()
            _export(modules[0], graph, quantize)
            os.utime(graph.parent)  # used now: pruning goes by last use
            if new:
                prune_exports(self.cache_dir)
            self.routes[name] = _Route(modules, graph, self.backend)
        return self.routes[name]

    def _encode(self, role: str, texts: Sequence[str], batch_size: int = 64,
                normalize_embeddings: bool = False, show_progress_bar: bool = False,
                **_: Any) -> np.ndarray:
        prompt = self.prompts[role]
        return self.route(role).encode([prompt + t for t in texts] if prompt else list(texts),
                                       batch_size, normalize_embeddings, show_progress_bar)

    def encode_query(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self._encode("query", texts, **kwargs)

    def encode_document(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self._encode("document", texts, **kwargs)


# One ExportedModel per (loaded model, backend) in a process, gone with the model.
_EXPORTED: weakref.WeakKeyDictionary[Any, dict[str, ExportedModel]] = (
    weakref.WeakKeyDictionary())


def exported(model: Any, backend: str) -> ExportedModel:
    """`model` encoding through `backend` (an ExportedModel is returned as it is)."""
    if isinstance(model, ExportedModel):
        return model
    per_backend = _EXPORTED.setdefault(model, {})
    if backend not in per_backend:
        per_backend[backend] = ExportedModel(model, backend)
    return per_backend[backend]


def _route_modules(model: Any) -> dict[str, list[Any]]:
    from sentence_transformers.base.modules import Router

    modules = list(model.children())
    if modules and isinstance(modules[0], Router):
        tail = modules[1:]
        return {name: [*route, *tail] for name, route in modules[0].sub_modules.items()}
    return {"all": modules}


def export_refusal(model: Any) -> str | None:
    """Why `model` cannot be exported (a Dense layer, another pooling), or None."""
    try:
        for name, modules in _route_modules(model).items():
            _check_shape(name, modules)
    except CheckpointError as exc:
        return str(exc)
    return None


def _check_shape(name: str, modules: list[Any]) -> None:
    kinds = [type(m).__name__ for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise CheckpointError(f"cannot export route {name!r} ({' -> '.join(kinds)}): only "
                              f"Transformer -> Pooling [-> Normalize] is supported; use "
                              f"encode_backend = \"torch\"")
    if modules[1].pooling_mode not in ("mean", "cls"):
        raise CheckpointError(f"cannot export route {name!r}: only mean or CLS pooling, not "
                              f"{modules[1].pooling_mode!r}")
    if not getattr(modules[1], "include_prompt", True):  # the numpy pooling counts every token
        raise CheckpointError(f"cannot export route {name!r}: its pooling leaves the prompt's "
                              f"tokens out (include_prompt = false)")


KEEP_EXPORTS = 8


def prune_exports(cache_dir: Path, keep: int = KEEP_EXPORTS,
                  min_age_s: float = 86_400) -> list[Path]:
    """Every candidate adds an export to the cache (~90 MB for MiniLM, ~470 MB for
    multilingual-e5-small), so a nightly deployment would fill its disk in weeks: keep
    the `keep` most recently used, and any used within `min_age_s` (a process may be
    loading it). A pruned one is exported again if it is ever needed. Returns those
    removed."""
    entries = sorted((p for p in cache_dir.iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p for p in entries[keep:] if time.time() - p.stat().st_mtime > min_age_s]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


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
        # a copy: the model itself may be training, on a GPU or in bf16
        wrapped = LastHiddenState(copy.deepcopy(transformer.auto_model).float().cpu()).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes about Python-side branches (fixed for an encoder) are noise
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
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


def load_exported(model: Any, backend: str, cache_dir: Path | None = None) -> ExportedModel:
    """`model` with its routes exported for `backend`, now (not on first use)."""
    encoder = ExportedModel(model, backend, cache_dir)
    for name in encoder.modules:
        encoder.route(name)
    return encoder
