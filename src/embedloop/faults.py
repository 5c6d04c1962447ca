"""Crash points: where the fault tests kill the pipeline, for real, with SIGKILL.

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

CRASH_AT = "EMBEDLOOP_CRASH_AT"
POINTS = ("ingest", "validate", "train", "evaluate", "register", "publish", "promote",
          "commit")


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
