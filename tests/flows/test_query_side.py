"""Query-side cycles through the real flow (Prefect, MLflow, GX, FAISS, MiniLM): the
candidate searches the champion's index, promotion re-indexes nothing, and the rule
"the live index was built by the champion's document encoder" holds through the
deployment turning hybrid, a corpus change, a full cycle after query-side ones, and a
rollback; a hybrid index version's BM25 side moves with its vectors through all of it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from embedloop.config import load_settings
from embedloop.flows.cli import main
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.production.champion import Production
from embedloop.production.registry import CHAMPION, DOCUMENT_ENCODER, FUSION_WEIGHT
from tests.helpers import ANY_CANDIDATE_WINS, first_week_logs, make_home, search

pytestmark = pytest.mark.usefixtures("prefect_harness")
E5_PROMPTS = {"query": "query: ", "document": "passage: "}


def run(config: Path, **overrides: Any) -> dict[str, Any]:
    from embedloop.flows.retrain import retrain

    return retrain(reason="test", config_file=str(config), overrides=overrides)


def test_query_side_cycles_keep_the_index_and_full_cycles_rebuild_it(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path) -> None:
    """With e5's prompts set for the base model: they go on record with every version
    and every index, and hold through both kinds of training and a rollback."""
    hybrid = {"retriever": "hybrid", "fusion_weight": 0.6}
    logs = first_week_logs(tmp_path, sim_logs)
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl",
                       prompts=E5_PROMPTS, retriever="dense", **ANY_CANDIDATE_WINS)
    settings = load_settings(config)
    production = Production.from_settings(settings)
    store = FaissIndexStore(settings.index_dir)

    # 1. query side, dense: v2 searches v1's index; nothing is encoded, nothing re-indexed
    first = run(config)
    assert first["outcome"] == "promoted" and first["train_side"] == "query"
    assert (first["champion_version"], first["live_index"]) == ("2", "v0001")
    assert store.versions() == ["v0001"]
    assert production.registry.version_info("2").tags[DOCUMENT_ENCODER] == "1"
    state = production.state()
    assert state.aligned and state.document_encoder == "1"
    assert first["stage_seconds"]["index candidate"] < 1.0
    hits = search(settings, "protein", k=3)
    assert len(hits) == 3
    run_data = production.registry.client.get_run(first["mlflow_run_id"]).data
    assert run_data.params["train_side"] == "query"
    # (not capsys: Prefect's log handler, set up by the run above, keeps its stream)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["status", "--config", str(config)]) == 0
    assert "live index  v0001: 200 docs, built by v1" in out.getvalue()
    assert "v2 trained its query side only and shares that document encoder" in out.getvalue()
    assert "ranker      v2 with index v0001: dense" in out.getvalue()

    # 2. the deployment turns hybrid: the incumbent is judged with BM25 beside v1's
    #    vectors, and that index (the same vectors, no encoding) goes live with v3
    rows = (sim_logs / "batch-002.jsonl").read_text().splitlines(keepends=True)
    third_of = len(rows) // 3
    (logs / "2a.jsonl").write_text("".join(rows[:third_of]))
    second = run(config, **hybrid)
    assert second["outcome"] == "promoted" and second["champion_version"] == "3"
    assert second["live_index"] == "v0002"
    manifest = store.manifest("v0002")
    assert (manifest.model_version, manifest.n_docs) == ("1", 200)
    assert manifest.lexical == load_settings(config, **hybrid).lexical_spec.describe()
    assert any("lexical side" in note for note in second["notes"])
    assert store.load("v0002").index.ntotal == 200 and store.load("v0001").lexical is None
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["status", "--config", str(config)]) == 0
    assert ("ranker      v3 with index v0002: hybrid: 0.6 dense + 0.4 BM25, min-max scaled, "
            "top 100") in out.getvalue()
    live = Production.from_settings(settings).retriever()  # what `embedloop search` uses
    assert live.index.lexical is not None and live.index.lexical.fusion.weight == 0.6
    assert len(search(settings, "protein", k=3)) == 3
    # the fusion weight is the candidate's: chosen on the tune queries (the day-0 one
    # kept, here), on record with its version, in the summary and beside the per-side
    # metrics in MLflow
    assert production.registry.version_info("3").tags[FUSION_WEIGHT] == "0.6"
    assert second["fusion_weight"] == 0.6 and second["fusion_why"].startswith("kept 0.6")
    tracked = production.registry.client.get_run(second["mlflow_run_id"]).data
    assert tracked.params["candidate.fusion_weight"] == "0.6"
    assert {f"{who}.{side}.ndcg_at_10" for who in ("candidate", "incumbent")
            for side in ("dense", "bm25")} <= set(tracked.metrics)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["search", "protein", "-k", "3", "--local", "--sides",
                     "--config", str(config)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["fused", "dense", "BM25"] and len(lines) == 4

    # 3. query side after the corpus changed: the incumbent is re-encoded to compare
    #    fairly, BM25 rebuilt over the new corpus, and that index (v1's document encoder,
    #    new corpus) goes live with v4
    lines = (tiny_beir / "corpus.jsonl").read_text().splitlines()
    extra = [json.dumps({**json.loads(line), "_id": f"new-{i}"}) for i, line in
             enumerate(lines[:5])]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines + extra) + "\n")
    (logs / "2b.jsonl").write_text("".join(rows[third_of:2 * third_of]))
    third = run(config, corpus=str(corpus), **hybrid)
    assert third["outcome"] == "promoted" and third["champion_version"] == "4"
    assert third["live_index"] == "v0003"
    manifest = store.manifest("v0003")
    assert (manifest.model_version, manifest.n_docs) == ("1", 205)
    rebuilt = store.load("v0003").lexical
    assert rebuilt is not None and len(rebuilt.sparse.doc_ids) == 205
    assert production.registry.version_info("4").tags[DOCUMENT_ENCODER] == "1"
    assert production.state().aligned

    # 4. a full cycle from the asymmetric champion: new document encoder, new index,
    #    both sides
    (logs / "2c.jsonl").write_text("".join(rows[2 * third_of:]))
    fourth = run(config, corpus=str(corpus), train_side="full", **hybrid)
    assert fourth["outcome"] == "promoted" and fourth["train_side"] == "full"
    assert (fourth["champion_version"], fourth["live_index"]) == ("5", "v0004")
    assert store.manifest("v0004").model_version == "5"
    assert store.manifest("v0004").lexical == manifest.lexical
    assert DOCUMENT_ENCODER not in production.registry.version_info("5").tags
    assert production.state().aligned
    for version in ("1", "2", "3", "4", "5"):
        assert json.loads(production.registry.version_info(version).tags["prompts"]) == \
            E5_PROMPTS
    assert all(store.manifest(v).prompts == E5_PROMPTS for v in store.versions())

    # 5. rollback: v4 comes back with the index its document encoder built, BM25 side
    #    and all
    from embedloop.flows.rollback import rollback

    back = rollback(reason="test", config_file=str(config))
    assert (back["from"], back["to"], back["live_index"]) == ("5", "4", "v0003")
    assert production.registry.version_for_alias(CHAMPION) == "4"
    assert production.state().aligned
    assert store.load().lexical is not None
    assert [h.doc_id for h in search(settings, "protein", k=3)]


def test_an_index_from_another_document_encoder_is_refused(tmp_path: Path, sim_logs: Path,
                                                           tiny_beir: Path) -> None:
    """A query-side version searches only indexes its document encoder built."""
    from embedloop.errors import IndexUnavailable

    config = make_home(tmp_path / "home", first_week_logs(tmp_path, sim_logs),
                       tiny_beir / "corpus.jsonl", **ANY_CANDIDATE_WINS)
    assert run(config)["champion_version"] == "2"
    production = Production.from_settings(load_settings(config))
    index = production.store.load("v0001")
    production.check_index(index, "2")  # v2 shares v1's document encoder
    production.registry.tag_version("2", **{DOCUMENT_ENCODER: "7"})
    with pytest.raises(IndexUnavailable, match="built by .* v1, not .* v7"):
        production.check_index(index, "2")
    with pytest.raises(IndexUnavailable):
        production.champion_pair()
