"""Loading a model and turning texts into unit-length float32 vectors."""

from __future__ import annotations

import contextlib
import functools
import os
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


@dataclass(frozen=True)
class Runtime:
    """Where and how this process encodes and trains, and why (logged with each run)."""

    device: str
    precision: str
    why: str


def choose_runtime(precision: str) -> Runtime:
    device = pick_device()
    return Runtime(device, *choose_precision(precision, device))


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    import torch

    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype):
        yield


def load_model(path: str, device: str | None = None,
               max_seq_length: int | None = None) -> SentenceTransformer:
    """Load a local sentence-transformers folder; never reaches a hub, never runs remote code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    each with its own route, and a model with prompts prefixes each with its own."""
    import torch

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    device = str(model.device)
    if not texts:
        dim = model.get_sentence_embedding_dimension() or 0
        return np.zeros((0, dim), dtype=np.float32)
    how = model.encode_query if role == "query" else model.encode_document
    with torch.inference_mode(), autocast(precision, device):
        vectors = how(list(texts), batch_size=batch_size, convert_to_numpy=True,
                      normalize_embeddings=True, show_progress_bar=show_progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)
