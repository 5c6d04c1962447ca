"""Where embedloop keeps what it derives from model weights, and how a derived folder is
made: whole or not at all. Below base_models and multilingual, which both make folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str, override: str) -> Path:
    """Where embedloop keeps what it derives from model weights (exports, converted and
    prompted models): `override` (an environment variable) if set, else the user's cache
    folder, which every deployment on the machine shares."""
    if os.environ.get(override):
        return Path(os.environ[override])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedloop" / kind


def model_cache_dir() -> Path:
    return cache_dir("models", "EMBEDLOOP_MODEL_CACHE")


def made_once(out: Path, make: Callable[[Path], None]) -> Path:
    """`out`, a folder `make(staging)` fills: made in a staging folder beside it and
    renamed, so it is whole or absent; a concurrent maker may win the rename."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        make(staging)
        try:
            staging.rename(out)
        except OSError:
            if not out.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
