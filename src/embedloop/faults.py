"""Crash points: where the fault tests kill the pipeline, for real, with SIGKILL, and
pause points, where the outage tests stop a real server under a running pipeline.

`crash_point("publish")` does nothing unless the environment names that point in
EMBEDLOOP_CRASH_AT, in which case the process kills itself as the kernel's OOM killer
or a node failure would: no exception, no `finally`, no flushing. The tests then check
that production (the champion alias and the live index) and the ledger are as they
were, and that the next run completes. Points are placed mid-stage, after the stage
has written its first files.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CRASH_AT = "EMBEDLOOP_CRASH_AT"
PAUSE_AT, PAUSE_FILE = "EMBEDLOOP_PAUSE_AT", "EMBEDLOOP_PAUSE_FILE"
POINTS = ("ingest", "validate", "train", "evaluate", "register", "publish", "promote",
          "commit")


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(name: str, limit_s: float = 600) -> None:
    """Where EMBEDLOOP_PAUSE_AT names this point: create EMBEDLOOP_PAUSE_FILE and wait
    until the test removes it (having stopped a server meanwhile)."""
    if os.environ.get(PAUSE_AT) != name:
        return
    flag = Path(os.environ[PAUSE_FILE])
    flag.write_text(f"paused at {name} (pid {os.getpid()})")
    deadline = time.monotonic() + limit_s
    while flag.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
