"""The retrain and rollback flows with the Milvus backend (Milvus Lite, embedded): each
model version's index is its own collection, promotion and rollback move the `live`
alias in one step, and a promotion cut off between the registry alias and the Milvus
alias is answered around, then finished. The deployment is hybrid: each version's BM25
side is in its collection too, and moves with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from embedloop.config import load_settings
from embedloop.production.champion import Production
from tests.helpers import ANY_CANDIDATE_WINS, first_week_logs, make_home, search

pytest.importorskip("pymilvus")
pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(config: Path, **overrides: Any) -> dict[str, Any]:
    from embedloop.flows.retrain import retrain

    return retrain(reason="test", config_file=str(config), overrides=overrides)


def test_promotion_rollback_and_a_cut_off_swap_on_milvus(tmp_path: Path, sim_logs: Path,
                                                        tiny_beir: Path) -> None:
    from embedloop.flows.rollback import rollback

    logs = first_week_logs(tmp_path, sim_logs)
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl",
                       index_backend="milvus", retriever="hybrid", **ANY_CANDIDATE_WINS)
    settings = load_settings(config)

    # a full cycle: the candidate's index is uploaded as a new collection and goes live
    first = run(config, train_side="full")
    assert (first["outcome"], first["champion_version"], first["live_index"]) == \
        ("promoted", "2", "v0002")
    production = Production.from_settings(settings)
    store = production.store
    assert store.describe().startswith("Milvus at ")
    assert (settings.state_dir / "milvus.db").exists()
    assert store.versions() == ["v0001", "v0002"] and store.live_version() == "v0002"
    assert {store.manifest(v).model_version for v in store.versions()} == {"1", "2"}
    assert production.state().aligned
    assert len(search(settings, "protein folding", k=3)) == 3
    assert all(store.manifest(v).lexical == settings.lexical_spec.describe()
               for v in store.versions())
    live = store.load()
    assert type(live.lexical.sparse).__name__ == "MilvusSparse"  # served from Milvus
    assert live.lexical.sparse.search(["protein"], 3)[0]

    # a query-side cycle trains against the vectors stored in Milvus; nothing uploaded
    (logs / "2.jsonl").write_bytes((sim_logs / "batch-002.jsonl").read_bytes())
    second = run(config)
    assert (second["outcome"], second["champion_version"], second["live_index"]) == \
        ("promoted", "3", "v0002")
    assert store.versions() == ["v0001", "v0002"]

    # rollback to v2 (same collection: v3 shared v2's document encoder), then to v1,
    # whose collection was kept
    back = rollback(reason="test", config_file=str(config))
    assert (back["from"], back["to"], back["live_index"]) == ("3", "2", "v0002")
    back = rollback(reason="test", config_file=str(config))
    assert (back["from"], back["to"], back["live_index"]) == ("2", "1", "v0001")
    assert store.live_version() == "v0001" and production.state().aligned

    # a promotion cut off after the registry alias moved, before the Milvus alias did
    production.registry.promote("2")
    assert not production.state().aligned
    assert production.champion_pair() == ("2", "v0002")  # searches already use v2's own
    assert production.repair() == "v0002"
    assert store.live_version() == "v0002" and production.state().aligned
