"""Loading a model and turning texts into unit-length float32 vectors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedloop.errors import CheckpointError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """bf16 is ~3x faster than fp32 on CPUs with AVX512-BF16/AMX and far slower without
    (measured here: 21 docs/s fp32 vs 3 docs/s bf16 on a CPU lacking it)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> 'bf16'/'fp16' on CUDA, 'bf16' on CPUs with native bf16, else 'fp32'."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


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


def encode(model: SentenceTransformer, texts: Sequence[str], *, batch_size: int = 64,
           precision: str = "fp32", show_progress: bool = False) -> np.ndarray:
    """(n_texts, dim) float32, L2-normalized, so inner product is cosine similarity."""
    import torch

    device = str(model.device)
    if not texts:
        dim = model.get_sentence_embedding_dimension() or 0
        return np.zeros((0, dim), dtype=np.float32)
    with torch.inference_mode(), autocast(precision, device):
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                               normalize_embeddings=True, show_progress_bar=show_progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)
