"""One retrain or rollback at a time per state directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from embedloop.errors import RunInProgress


@contextlib.contextmanager
def exclusive(state_dir: Path, what: str) -> Iterator[None]:
    """Holds an OS lock (released even if the process is killed); a second caller is
    refused at once with the holder's description rather than left waiting."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "pipeline.lock"
    with path.open("a+") as handle:
        _lock_or_refuse(handle, what, path)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def refuse_if_held(state_dir: Path, what: str) -> None:
    """Raise RunInProgress now if another run holds the lock: the CLI refuses at once,
    before starting a Prefect server for a run that could only be refused. (The flow
    still takes the lock itself, so a run that starts after this look is refused there.)"""
    path = state_dir / "pipeline.lock"
    if not path.exists():
        return
    with path.open("a+") as handle:
        _lock_or_refuse(handle, what, path)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_or_refuse(handle: IO[str], what: str, path: Path) -> None:
    """Take the lock without waiting, or raise naming the run that holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RunInProgress(f"cannot start {what}: {holder} is still running "
                            f"(lock {path})") from None
