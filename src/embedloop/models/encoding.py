"""Loading a model and turning texts into unit-length float32 vectors."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedloop.errors import CheckpointError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# Flags that mean bf16 runs in hardware: x86 AVX512-BF16 or AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of /proc/cpuinfo's text ("flags" on x86, "Features" on Arm)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def bf16_verdict(flags: set[str] | None) -> tuple[bool, str]:
    """Whether bf16 is worth using on this CPU, and why. torch's mkldnn check says yes
    wherever bf16 can be emulated, and emulated bf16 is 2.5x slower than fp32 (measured
    on AVX-512 without avx512_bf16: 8.6 against 22 docs/s), so only the flags count."""
    if flags is None:
        return False, "CPU flags unknown (no /proc/cpuinfo): fp32, the safe choice"
    native = sorted(flags & NATIVE_BF16_FLAGS)
    if native:
        return True, f"CPU has {', '.join(native)}: bf16 runs in hardware"
    return False, ("CPU lacks avx512_bf16/amx_bf16: bf16 would be emulated, slower than "
                   "fp32")


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    try:
        flags: set[str] | None = cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = None
    return bf16_verdict(flags)


def resolve_precision(precision: str, device: str) -> str:
    return choose_precision(precision, device)[0]


def choose_precision(precision: str, device: str) -> tuple[str, str]:
    """(precision, why): 'auto' -> bf16/fp16 on CUDA, bf16 on CPUs with native bf16,
    else fp32; anything else as asked."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        return precision, "set in the configuration"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device with bf16 support"
        return "fp16", "CUDA device without bf16: fp16"
    native, why = cpu_bf16()
    return ("bf16" if native else "fp32"), why


def choose_encoder(backend: str, device: str, precision: str) -> tuple[str, str]:
    """(encoder, why): how documents (and the queries searched against them) are encoded.
    An exported backend's name, or the torch precision. 'auto' takes OpenVINO on a CPU
    where it is installed (the fastest on the encode benchmark, at no loss in NDCG@10),
    torch on a GPU."""
    from embedloop.models.exported import ENCODE_BACKENDS, backend_available

    if backend not in ("auto", *ENCODE_BACKENDS):
        raise ValueError(f"encode_backend must be auto or one of {ENCODE_BACKENDS}, not "
                         f"{backend!r}")
    if backend == "auto":
        if device.startswith("cuda"):
            return precision, "a GPU: torch"
        if backend_available("openvino"):
            return "openvino", "CPU with OpenVINO installed"
        return precision, "OpenVINO not installed: torch"
    if backend == "torch":
        return precision, "set in the configuration"
    if not backend_available(backend):
        package = "'embedloop[onnx]'" if backend.startswith("onnx") else "openvino"
        raise ValueError(f"encode_backend {backend!r} is not installed: pip install {package}")
    return backend, "set in the configuration"


@dataclass(frozen=True)
class Runtime:
    """Where and how this process encodes and trains, and why (logged with each run).
    `precision` is torch's (training, and encoding when `encoder` is a torch precision);
    `encoder` is what indexing and search use: a torch precision or an exported backend."""

    device: str
    precision: str
    why: str
    encoder: str = ""
    encoder_why: str = ""

    def __post_init__(self) -> None:
        if not self.encoder:
            object.__setattr__(self, "encoder", self.precision)


def choose_runtime(precision: str, encode_backend: str = "torch") -> Runtime:
    device = pick_device()
    chosen, why = choose_precision(precision, device)
    return Runtime(device, chosen, why, *choose_encoder(encode_backend, device, chosen))


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    import torch

    if precision not in ("bf16", "fp16"):  # fp32, or an exported backend's name
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype):
        yield


def load_model(path: str, device: str | None = None,
               max_seq_length: int | None = None) -> SentenceTransformer:
    """Load a local sentence-transformers folder (base_models.py turns names and hub ids
    into one); never reaches a hub, never runs remote code."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight load is noise, not progress
    try:
        # safetensors only: a pickle-format checkpoint (pytorch_model.bin) can run code
        # when unpickled, and models come from places this process did not write.
        model = SentenceTransformer(str(path), device=device or pick_device(),
                                    trust_remote_code=False, local_files_only=True,
                                    model_kwargs={"use_safetensors": True})
    except Exception as exc:  # safetensors, JSON, tokenizer and torch errors alike
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"cannot load the model at {path}: {type(exc).__name__}: "
                              f"{first_line}") from exc
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


ROLES = ("query", "document")


def encode(model: SentenceTransformer, texts: Sequence[str], *, role: str,
           batch_size: int = 64, precision: str = "fp32",
           show_progress: bool = False) -> np.ndarray:
    """(n_texts, dim) float32, L2-normalized, so inner product is cosine similarity.

    `role` is "query" or "document": an asymmetric model (a query-side candidate) encodes
    each with its own route, and a model with prompts prefixes each with its own.
    `precision` is a torch precision or an exported backend ("openvino", "onnx",
    "onnx-int8"): then the model's export does the work (exported.py)."""
    import torch

    from embedloop.models.exported import EXPORTED, embedding_dimension, exported

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if precision in EXPORTED:
        model = exported(model, precision)
    device = str(model.device)
    if not texts:
        dim = embedding_dimension(model)
        return np.zeros((0, dim), dtype=np.float32)
    how = model.encode_query if role == "query" else model.encode_document
    with torch.inference_mode(), autocast(precision, device):
        vectors = how(list(texts), batch_size=batch_size, convert_to_numpy=True,
                      normalize_embeddings=True, show_progress_bar=show_progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)
