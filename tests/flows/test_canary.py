"""The interleaved canary through the real flow, the real service core and the real
registry: a kept candidate that is short of evidence is canaried; the clicks of its
interleaved sessions, logged with their teams, promote it at the next run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from embedloop.config import load_settings
from embedloop.ledger import load_ledger, looks_at
from embedloop.production import Production
from embedloop.serving import LiveSearch
from flows.cli import main
from tests.flows.test_retrain import run
from tests.helpers import first_week_logs, make_home

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_waiting_candidate_is_canaried_then_promoted_by_its_sessions_clicks(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path) -> None:
    logs = first_week_logs(tmp_path, sim_logs, "day-1.jsonl")
    # Any gain counts (min_improvement -1), but none is credible offline at this alpha
    # (a pool this small cannot reach p < 5e-6): the candidate waits for evidence.
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl",
                       min_improvement=-1.0, significance_alpha=1e-5, canary_share=1.0,
                       canary_min_sessions=20)
    settings = load_settings(config)
    first = run(config, reason="day 1")
    assert first["outcome"] == "kept" and "not credibly" in first["decision_reason"]
    assert first["canary_started"] == first["candidate_version"] == "2"
    production = Production.from_settings(settings)
    assert production.state().canary == "2"
    assert production.canary_pair("1") is not None  # its evaluated index was kept
    # (not capsys: Prefect's log handler, set up by the runs above, keeps its stream)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["status", "--config", str(config)]) == 0
    assert "canary      v2 interleaved with v1" in out.getvalue()
    # on-call can stop it (and nothing else moves); started again for the rest
    assert main(["stop-canary", "--reason", "looks odd", "--config", str(config)]) == 0
    assert production.state().canary is None and production.state().champion == "1"
    assert main(["stop-canary", "--reason", "again", "--config", str(config)]) == 3
    assert "stopped by hand: looks odd" in production.registry.version_info(
        "2").tags["canary_outcome"]
    production.start_canary("2")

    # The service's core interleaves v2 with v1. Users click the first result v2 placed;
    # a list in which the two agree all along (every result shared) gets no click.
    live = LiveSearch(production, device="cpu", max_seq_length=96, canary_share=1.0)
    live.refresh()
    queries = [json.loads(line)["text"] for line in
               (tiny_beir / "queries.jsonl").read_text().splitlines()]
    rows: list[dict[str, object]] = []
    voted = 0
    for s in range(len(queries) * 3):
        query = queries[s % len(queries)]
        answer = live.search(query, 10, session=f"canary-{s}")
        assert answer.teams is not None and set(answer.teams) <= {"1", "2", None}
        clicked = answer.teams.index("2") if "2" in answer.teams and voted < 30 else -1
        voted += clicked >= 0
        rows += [{"event_id": f"c{s}-{p}", "ts": f"2026-03-20T{s // 60:02d}:{s % 60:02d}:"
                                                  f"{p:02d}Z",
                  "session_id": f"canary-{s}", "query": query, "doc_id": hit.doc_id,
                  "position": p + 1, "clicked": p == clicked,
                  **({"team": team} if team else {})}
                 for p, (hit, team) in enumerate(zip(answer.hits, answer.teams, strict=True))]
    assert voted == 30  # the two versions differ on enough queries
    (logs / "day-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    second = run(config, reason="day 2")
    assert second["outcome"] == "promoted", second["decision_reason"]
    assert "canary v2 won the interleaved canary" in second["decision_reason"]
    assert second["canary"]["action"] == "promote"
    assert (second["canary"]["candidate_wins"], second["canary"]["champion_wins"]) == (30, 0)
    state = production.state()
    assert (state.champion, state.canary) == ("2", None) and state.aligned
    # v2 was trained query-side: it searches the index of v1's document encoder
    assert state.live_manifest is not None
    assert state.live_manifest.model_version == state.document_encoder == "1"
    assert looks_at(settings.state_dir, "1") == 2  # the canary's judgement was a look too
    # The batch is left for the next run, which trains on it from the new champion.
    ledger = load_ledger(settings.state_dir)
    assert len(ledger.batches) == 1
    assert any(name.endswith("day-1.jsonl") for name in ledger.cursors)
    assert not any(name.endswith("day-2.jsonl") for name in ledger.cursors)
