"""Faults, for real: `embedloop retrain` processes killed with SIGKILL in every stage, a
full and a read-only artifact store (a real tmpfs), damaged checkpoints. After each:
production (the champion alias and the live index) is as it was, no log row is lost or
committed twice, and the next run completes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from embedloop.config import load_settings
from embedloop.faults import CRASH_AT, POINTS
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.ingest.ledger import batch_dir, load_ledger
from embedloop.production.champion import Production
from embedloop.production.registry import CHAMPION, Registry
from tests.helpers import ANY_CANDIDATE_WINS, first_week_logs, make_home, search
from tests.integration.servers import free_port, server
from tests.zygote import Zygote

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Prefect server for every process of this module (an ephemeral one per
    process would cost ~15 s each, and SIGKILL would orphan it)."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
    env.pop("PREFECT_API_URL", None)
    with server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(port)], env, f"http://127.0.0.1:{port}/api/health", "Prefect server",
                home / "server.log"):
        yield f"http://127.0.0.1:{port}/api"


class Runs:
    """`embedloop retrain` processes recorded in this module's Prefect server, forked from
    the session's zygote (tests/zygote.py)."""

    def __init__(self, api: str, zygote: Zygote) -> None:
        self.api, self.zygote = api, zygote

    def retrain(self, config: Path, reason: str, *, crash_at: str | None = None,
                mounts: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PREFECT_API_URL": self.api}
        env.pop(CRASH_AT, None)
        if crash_at:
            env[CRASH_AT] = crash_at
        return self.zygote.run(["retrain", "--reason", reason, "--config", str(config)], env,
                               mounts=mounts)


@pytest.fixture(scope="module")
def runs(prefect_api: str, zygote: Zygote) -> Runs:
    return Runs(prefect_api, zygote)


def production(config: Path) -> tuple[str | None, str | None]:
    """(champion version, live index version)"""
    s = load_settings(config)
    registry = Registry(s.resolved_tracking_uri, s.model_name, s.artifact_root)
    return registry.version_for_alias(CHAMPION), FaissIndexStore(s.index_dir).live_version()


def committed_rows(config: Path) -> pd.DataFrame:
    state = load_settings(config).state_dir
    frames = []
    for batch in load_ledger(state).batches:
        for name in ("accepted", "quarantine"):
            frame = pd.read_parquet(batch_dir(state, batch) / f"{name}.parquet")
            frames.append(frame[["source", "line"]].astype({"line": int}))
    return pd.concat(frames, ignore_index=True)


def log_lines(folder: Path) -> set[tuple[str, int]]:
    return {(p.name, i) for p in folder.glob("*.jsonl")
            for i, line in enumerate(p.read_text().splitlines(), start=1) if line.strip()}


def add_batch(config: Path, sim_logs: Path, name: str) -> Path:
    """A new week of logs: batch 2's rows under new event ids."""
    path = Path(load_settings(config).logs) / f"{name}.jsonl"
    path.write_text((sim_logs / "batch-002.jsonl").read_text()
                    .replace('"event_id": "', f'"event_id": "{name}-'))
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    [line] = [x for x in result.stderr.splitlines() if x.startswith("embedloop retrain: error")]
    assert "Traceback" not in result.stderr.split(line)[-1]
    return line


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sim_logs: Path, tiny_beir: Path,
         runs: Runs) -> Path:
    """A deployment after one promoted run; batch 2 has arrived and is not read yet.
    The gate accepts any candidate, so every run reaches publishing."""
    root = tmp_path_factory.mktemp("faults")
    logs = first_week_logs(root, sim_logs, "batch-001.jsonl")
    config = make_home(root / "home", logs, tiny_beir / "corpus.jsonl", **ANY_CANDIDATE_WINS)
    first = runs.retrain(config, "first week")
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copy(sim_logs / "batch-002.jsonl", logs)
    return config


def test_sigkill_in_every_stage_changes_nothing_and_loses_nothing(
        home: Path, runs: Runs) -> None:
    """Each run is killed one stage later than the one before, so each also proves that
    the previous crash did not stop the stages before its own."""
    logs = load_settings(home).logs
    before = production(home)
    batches_before = load_ledger(load_settings(home).state_dir).batches
    for point in POINTS:
        result = runs.retrain(home, f"killed in {point}", crash_at=point)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-3000:])
        champion, live = production(home)
        if point in ("promote", "commit"):
            # Past the commit point: the promotion stands. A crash between the alias move
            # and the index swap is finished by the next start; searches meanwhile use
            # the index the champion built.
            assert champion != before[0], point
            hits = search(load_settings(home), "cancer treatment", 3)
            assert len(hits) == 3
            before = (champion, live if point == "commit" else before[1])
        else:
            assert (champion, live) == before, point
        # The ledger moves only when a run completes: the new rows are still unread.
        assert load_ledger(load_settings(home).state_dir).batches == batches_before, point

    final = runs.retrain(home, "after the crashes")
    assert final.returncode == 0, final.stderr[-3000:]
    champion, live = production(home)
    s = load_settings(home)
    # the live index was built by the champion's document encoder (its own, or, for a
    # query-side champion, the one it shares)
    encoder = Production.from_settings(s).document_encoder(champion)
    assert FaissIndexStore(s.index_dir).manifest(live).model_version == encoder
    # Every line of both log files committed exactly once, across the two batches.
    rows = committed_rows(home)
    assert not rows.duplicated().any()
    assert set(map(tuple, rows.itertuples(index=False))) == log_lines(Path(logs))
    assert len(load_ledger(s.state_dir).batches) == len(batches_before) + 1


def _unshare_works() -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("mount, expected", [
    ("size=8m", "No space left on device"),
    ("ro", "Read-only file system"),
])
def test_full_or_read_only_artifact_store_fails_clearly_and_promotes_nothing(
        home: Path, runs: Runs, sim_logs: Path, mount: str, expected: str) -> None:
    """The artifact directory on a real filesystem that is full (8 MB tmpfs: the model
    is 90 MB) or read-only, mounted in a private mount namespace for this one process."""
    if not _unshare_works():
        pytest.fail("these tests need `unshare --user --mount` (util-linux) to mount a tmpfs")
    s = load_settings(home)
    artifacts = s.artifact_root
    new = add_batch(home, sim_logs, f"full-{mount}")
    before = production(home)
    batches = load_ledger(s.state_dir).batches
    mounts = (f"mount -t tmpfs -o {mount} tmpfs {artifacts}" if mount != "ro" else
              f"mount --bind {artifacts} {artifacts} && mount -o remount,bind,ro {artifacts}")
    result = runs.retrain(home, f"artifact store {mount}", mounts=mounts)
    assert result.returncode == 1, result.stderr[-3000:]
    assert expected in one_line_error(result)
    assert production(home) == before
    assert load_ledger(s.state_dir).batches == batches  # the rows are read again next run
    new.unlink()


def _model_file(folder: Path) -> Path:
    """The weights of a saved model (of its first route, for a query-side one)."""
    weights = sorted(folder.rglob("model.safetensors"))
    assert weights, folder
    return weights[0]


def test_a_damaged_local_checkpoint_is_fetched_again(home: Path) -> None:
    """A truncated copy of the champion in the local cache fails its checksum and is
    downloaded again from the registry."""
    s = load_settings(home)
    champion, _ = production(home)
    assert champion is not None
    weights = _model_file(s.state_dir / "models" / f"v{champion}")
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    registry = Registry(s.resolved_tracking_uri, s.model_name, s.artifact_root)
    path = registry.local_model_path(champion, s.state_dir / "models")
    assert _model_file(Path(path)).stat().st_size == size
    assert "damaged" in registry.repairs[0]


def test_a_corrupt_registered_checkpoint_fails_the_run_in_one_line(
        home: Path, runs: Runs, sim_logs: Path) -> None:
    """Damaged in the registry too: the run fails naming the file, and nothing changes."""
    s = load_settings(home)
    before = production(home)
    champion = before[0]
    registry = Registry(s.resolved_tracking_uri, s.model_name, s.artifact_root)
    source = Path(registry.client.get_model_version_download_uri(s.model_name, champion)
                  .removeprefix("file://"))
    cached = s.state_dir / "models" / f"v{champion}"
    saved: dict[Path, bytes] = {}
    for weights in (_model_file(source), _model_file(cached)):
        saved[weights] = weights.read_bytes()
        weights.write_bytes(b'{"not": "safetensors"}' + bytes(100))
    shutil.rmtree(cached)  # as on a fresh worker: only the registry copy exists
    new = add_batch(home, sim_logs, "corrupt")
    try:
        result = runs.retrain(home, "corrupt champion")
        assert result.returncode == 1, result.stderr[-3000:]
        line = one_line_error(result)
        assert "cannot load the model" in line and f"v{champion}" in line, line
        assert production(home) == before
    finally:
        new.unlink()
        for weights, data in saved.items():
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.write_bytes(data)
        shutil.rmtree(cached, ignore_errors=True)


def test_nan_loss_is_a_failed_training_not_a_candidate(base_model_path: str,
                                                       tmp_path: Path) -> None:
    from embedloop.config import TrainingConfig
    from embedloop.learn.training import TrainingFailed, fine_tune

    pairs = pd.DataFrame({"anchor": [f"query {i}" for i in range(8)],
                          "positive": [f"document about topic {i}" for i in range(8)]})
    cfg = TrainingConfig(max_steps=4, batch_size=4, precision="fp32", learning_rate=1e9)
    with pytest.raises(TrainingFailed, match="training diverged"):
        fine_tune(base_model_path, pairs, tmp_path, cfg, device="cpu", show_progress=False)
