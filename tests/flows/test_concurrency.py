"""Two retrains started at once, as two real processes: one runs, the other is refused at
once with one line naming the run that holds the lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from embedloop.config import load_settings
from embedloop.ledger import load_ledger
from tests.helpers import FAST, make_home

BIN = Path(sys.executable).parent


def start(config: Path, reason: str, prefect_home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}  # each its own local Prefect
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([str(BIN / "embedloop"), "retrain", "--reason", reason,
                             "--config", str(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_second_retrain_is_refused_while_the_first_runs(tmp_path: Path, sim_logs: Path,
                                                        tiny_beir: Path) -> None:
    # Enough steps that the first run still holds the lock when the second starts.
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl",
                       training={**FAST["training"], "max_steps": 40})
    lock = load_settings(config).state_dir / "pipeline.lock"
    first = start(config, "first", tmp_path / "prefect-1")
    deadline = time.monotonic() + 240
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.2)

    second = start(config, "second", tmp_path / "prefect-2")
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=600)

    assert second.returncode == 1
    [error] = [line for line in err2.splitlines() if line.startswith("embedloop retrain:")]
    assert error.startswith("embedloop retrain: error: cannot start retrain (manual: second): "
                            "retrain (manual: first) (pid ")
    assert "Traceback" not in err2
    assert first.returncode == 0, err1[-3000:]
    assert "decision" in out1
    assert len(load_ledger(load_settings(config).state_dir).batches) == 1  # one run's batch
