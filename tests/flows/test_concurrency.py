"""Two retrains started at once, as two real processes: one runs, the other is refused at
once with one line naming the run that holds the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from embedloop.config import load_settings
from embedloop.index import IndexStore
from embedloop.ledger import load_ledger
from embedloop.registry import CHAMPION, Registry
from tests.helpers import FAST, make_home

BIN = Path(sys.executable).parent


def start(config: Path, reason: str, prefect_home: Path,
          **extra_env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home),  # each its own local Prefect
           **extra_env}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([str(BIN / "embedloop"), "retrain", "--reason", reason,
                             "--config", str(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_second_retrain_is_refused_while_the_first_runs(tmp_path: Path, sim_logs: Path,
                                                        tiny_beir: Path) -> None:
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl")
    # The first run waits, holding the lock, just before it registers its candidate.
    paused = tmp_path / "paused"
    first = start(config, "first", tmp_path / "prefect-1", EMBEDLOOP_PAUSE_AT="register",
                  EMBEDLOOP_PAUSE_FILE=str(paused))
    deadline = time.monotonic() + 300
    while not paused.exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never reached register"
        time.sleep(0.2)

    second = start(config, "second", tmp_path / "prefect-2")
    out2, err2 = second.communicate(timeout=300)
    paused.unlink()
    out1, err1 = first.communicate(timeout=600)

    assert second.returncode == 3  # refused: nothing is wrong, so no alert either
    [error] = [line for line in err2.splitlines() if line.startswith("embedloop retrain:")]
    assert error.startswith("embedloop retrain: refused: cannot start retrain (manual: second): "
                            "retrain (manual: first) (pid ")
    assert "Traceback" not in err2 and "ERROR" not in err2
    assert "Finished in state Refused" in err2 + out2
    assert first.returncode == 0, err1[-3000:]
    assert "decision" in out1
    assert len(load_ledger(load_settings(config).state_dir).batches) == 1  # one run's batch


def children_of(pid: int) -> set[int]:
    """Processes whose parent is `pid` (the temporary Prefect server, for one)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_a_retrain_cleanly(tmp_path: Path, sim_logs: Path,
                                         tiny_beir: Path) -> None:
    """systemd/Kubernetes stop with SIGTERM: the run stops within seconds, production and
    the ledger stay as they were, and no child process is left behind."""
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl",
                       training={**FAST["training"], "max_steps": 400})
    settings = load_settings(config)
    run = start(config, "to be stopped", tmp_path / "prefect")
    deadline = time.monotonic() + 300
    work = settings.state_dir / "work"
    while not (work.exists() and any(work.iterdir())):  # training is under way
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    children = children_of(run.pid)
    assert children, "expected the temporary Prefect server as a child"

    run.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    out, err = run.communicate(timeout=120)
    assert time.monotonic() - stopped < 30, "SIGTERM did not stop the run promptly"
    assert run.returncode == 130, err[-2000:]
    assert "embedloop retrain: interrupted" in err and "Traceback" not in err
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)], "child processes left behind"
    assert load_ledger(settings.state_dir).batches == []  # the rows stay unread
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    assert registry.version_for_alias(CHAMPION) == "1"  # the bootstrap champion, unchanged
    assert IndexStore(settings.index_dir).live_version() == "v0001"
