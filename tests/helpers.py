"""Helpers shared by test modules."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedloop.ingest.logs import Cursor, NewRows, iter_new_rows

# The shared simulator's user: (shown doc ids, relevant docs, noise only, rng) -> clicks
Clicks = Callable[[list[str], dict[str, int], bool, random.Random], list[bool]]

# max_seq_length 48: SciFact's abstracts fill any length, and each new home's first run
# encodes its 200 documents with the base model: 48 tokens took a tiny run's bootstrap
# from 18.8 to 12.3 s here (96 before), and the suite makes dozens of homes.
# min_holdout_queries: a 60-query slice has about 10 evaluation-pool queries.
# encode_backend "torch": an OpenVINO export per new model costs seconds that a 200-document
# corpus never wins back; the flow test that exercises "auto" (the default) says so
# (tests/flows/test_retrain.py: promoted), and tests/model/test_exported.py tests exports.
FAST = {"max_seq_length": 48, "encode_batch_size": 64, "min_clicks": 10,
        "min_holdout_queries": 5, "encode_backend": "torch",
        "training": {"max_steps": 3, "batch_size": 8, "precision": "fp32"}}


# A judge any candidate passes offline: for the flow tests that follow promotion, not the
# judge (no significance test, no harm margin a 3-step fine-tune could cross), nor the
# recipe: a 3-step fine-tune, unmixed (a mix may fall back to the parent on 7 tune
# queries, leaving nothing to promote; tests/flows/test_recipe.py tests the mix)
ANY_CANDIDATE_WINS = {"min_improvement": -1.0, "significance_alpha": 1.0, "harm_margin": 1.0,
                      "mixing_weights": []}


def first_week_logs(root: Path, sim_logs: Path, name: str = "1.jsonl") -> Path:
    """A log folder holding the simulator's first batch."""
    logs = root / "logs"
    logs.mkdir(parents=True)
    (logs / name).write_bytes((sim_logs / "batch-001.jsonl").read_bytes())
    return logs


def make_home(root: Path, logs: Path | str, corpus: Path, **settings: Any) -> Path:
    """A deployment's home with its own embedloop.toml, as a team would set one up."""
    root.mkdir(parents=True, exist_ok=True)
    merged = {**FAST, **settings}
    database = root / "mlruns" / "mlflow.db"
    if "tracking_uri" not in merged and not database.exists():
        database.parent.mkdir(exist_ok=True)
        database.write_bytes(_empty_mlflow_database())
    training = merged.pop("training")
    lines = ["[embedloop]", f'home = "{root}"', f'logs = "{logs}"', f'corpus = "{corpus}"']
    lines += [f"{k} = {_toml(v)}" for k, v in merged.items()]
    lines += ["[embedloop.training]"] + [f"{k} = {json.dumps(v)}" for k, v in training.items()]
    (root / "embedloop.toml").write_text("\n".join(lines) + "\n")
    return root / "embedloop.toml"


@functools.cache
def _empty_mlflow_database() -> bytes:
    """An MLflow database with every migration applied and nothing in it. A new home's
    first run spends ~2.5 s of the suite's CPU migrating its own; the tests make dozens.
    (`embedloop status` on a fresh home and the demo still migrate theirs.)"""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        SqlAlchemyStore(uri, f"{folder}/artifacts").engine.dispose()
        SqlAlchemyStore._engine_map.pop(uri, None)
        return Path(folder, "mlflow.db").read_bytes()


def _toml(value: Any) -> str:
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def search(config_or_settings: Any, text: str, k: int) -> list[Any]:
    """What `embedloop search` answers: the champion searching the index it built."""
    from embedloop.config import Settings, load_settings
    from embedloop.production.champion import Production

    settings = (config_or_settings if isinstance(config_or_settings, Settings)
                else load_settings(config_or_settings))
    return Production.from_settings(settings).retriever().search([text], k)[0]


def shared_clicks() -> Clicks:
    """The position-based user of ../shared/benchmarks/simulate_clicks.py (its
    `clicks_for`): the click model the benchmarks' logs are made with."""
    from tests.conftest import SHARED

    spec = importlib.util.spec_from_file_location("simulate_clicks",
                                                  SHARED / "simulate_clicks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.clicks_for


def read_new_rows(files: list[Path], cursors: dict[str, Cursor],
                  column_map: dict[str, str] | None = None) -> NewRows:
    """Everything `iter_new_rows` reads, in one chunk (small batches in tests)."""
    [whole] = iter_new_rows(files, cursors, column_map, chunk_rows=None)
    return whole
