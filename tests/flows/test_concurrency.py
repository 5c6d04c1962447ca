"""Real processes: two retrains at once (one runs, the other is refused at once with one
line naming the run that holds the lock), and a run stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from embedloop.config import load_settings
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.ingest.ledger import load_ledger
from embedloop.production.registry import CHAMPION, Registry
from tests.helpers import make_home
from tests.zygote import Forked, Zygote


def start(zygote: Zygote, config: Path, reason: str, prefect_home: Path,
          **extra_env: str) -> Forked:
    """`embedloop retrain`, a real process (forked from the session's zygote)."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home),  # each its own local Prefect
           **extra_env}
    env.pop("PREFECT_API_URL", None)
    return zygote.spawn(["retrain", "--reason", reason, "--config", str(config)], env)


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


def test_a_second_retrain_is_refused_and_sigterm_stops_the_first_cleanly(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path, zygote: Zygote) -> None:
    """Two real processes. The first is paused inside its training loop, holding the lock:
    the second is refused at once, in one line, exit 3 (nothing is wrong, so no alert).
    Then the first gets SIGTERM, as systemd or Kubernetes stop a service: it stops within
    seconds, production and the ledger stay as they were, and no child process (its
    temporary Prefect server) is left behind."""
    config = make_home(tmp_path / "home", sim_logs / "batch-001.jsonl",
                       tiny_beir / "corpus.jsonl")
    settings = load_settings(config)
    paused = tmp_path / "paused"
    first = start(zygote, config, "first", tmp_path / "prefect-1", EMBEDLOOP_PAUSE_AT="train",
                  EMBEDLOOP_PAUSE_FILE=str(paused))
    deadline = time.monotonic() + 300
    while not paused.exists():  # after the first training step
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never reached training"
        time.sleep(0.2)
    children = children_of(first.pid)
    assert children, "expected the temporary Prefect server as a child"

    second = start(zygote, config, "second", tmp_path / "prefect-2")
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 3, err2[-2000:]  # refused: nothing is wrong, no alert
    [line] = [x for x in err2.splitlines() if x.startswith("embedloop retrain:")]
    assert line.startswith("embedloop retrain: refused: cannot start retrain (manual: second): "
                           "retrain (manual: first) (pid ")
    assert "Traceback" not in err2 and "ERROR" not in err2
    assert not (tmp_path / "prefect-2").exists()  # refused before starting a Prefect server

    first.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    out1, err1 = first.communicate(timeout=120)
    assert time.monotonic() - stopped < 30, "SIGTERM did not stop the run promptly"
    assert first.returncode == 130, err1[-2000:]
    assert "embedloop retrain: interrupted" in err1 and "Traceback" not in err1
    # the children were told to stop; on a loaded machine they may take a moment to go
    deadline = time.monotonic() + 15
    while [pid for pid in children if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)], "child processes left behind"
    assert load_ledger(settings.state_dir).batches == []  # the rows stay unread
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    assert registry.version_for_alias(CHAMPION) == "1"  # the bootstrap champion, unchanged
    assert FaissIndexStore(settings.index_dir).live_version() == "v0001"
