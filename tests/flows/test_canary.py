"""Users decide, end to end: the real retrain flow, the real search service over HTTP
(FastAPI and uvicorn, following production), the real registry, and simulated
position-biased users (the shared simulator's click model) searching through it.

1. Day 1: the pool is too small to read anything offline, so the candidate (v2) goes to
   the canary: the service interleaves it with champion v1 on sessions of pool queries.
2. Users find what v2 ranks above v1 relevant. Day 2's run promotes v2 on those
   sessions' clicks alone, puts it on watch against v1, trains v3 from it and canaries
   v3.
3. Users now find what v1 ranks above v2 relevant. Day 3's run rolls v2 back to v1 on
   the watch's sessions (those logged after v2's promotion) and sends one alert; v3,
   judged against v2, is void, and the batch trains v4 from v1.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from embedloop.config import Settings, load_settings
from embedloop.flows.cli import main
from embedloop.learn.pairs import in_eval_pool, normalize_query
from embedloop.production.champion import Production
from embedloop.serve.api import create_app
from embedloop.serve.service import LiveSearch
from tests.flows.test_retrain import run
from tests.helpers import Clicks, first_week_logs, make_home, shared_clicks

pytestmark = pytest.mark.usefixtures("prefect_harness")

@contextlib.contextmanager
def service(settings: Settings) -> Iterator[tuple[str, LiveSearch]]:
    """`embedloop api`'s app over the deployment, on a free port, following production."""
    import uvicorn

    live = LiveSearch(Production.from_settings(settings), device="cpu",
                      max_seq_length=settings.max_seq_length, poll_s=1.0,
                      canary_share=settings.canary_share,
                      pool_fraction=settings.holdout_fraction)
    live.refresh()
    live.watch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(live), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", live
    finally:
        server.should_exit = True
        live.stop()
        thread.join(timeout=10)


@contextlib.contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local endpoint that keeps every alert POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alerts", received
    finally:
        server.shutdown()


def wait_for(live: LiveSearch, champion: str, kinds: set[str]) -> None:
    """Until the service serves `champion` with opponents of these kinds."""
    started = time.monotonic()
    while True:
        health = live.health()
        serving = (health["serving"] or {}).get("model_version")
        if serving == champion and {o["kind"] for o in health["interleaved"]} == kinds:
            return
        assert time.monotonic() - started < 60, health
        time.sleep(0.1)


def what_users_like(settings: Settings, better: str, worse: str,
                    queries: list[str]) -> dict[str, str]:
    """Per query, the document users find relevant: the first of `better`'s top 5 that
    `worse` ranks lower (or not at all). Queries where there is none are left out."""
    production = Production.from_settings(settings)
    tops = {v: production.retriever(v, max_seq_length=settings.max_seq_length).rank(
        queries, 10) for v in (better, worse)}
    liked = {}
    for query, good, bad in zip(queries, tops[better], tops[worse], strict=True):
        found = next((d for d in good[:5] if d not in bad or bad.index(d) > good.index(d)),
                     None)
        if found:
            liked[query] = found
    return liked


def users(base: str, liked: dict[str, str], sessions: int, day: str, seed: int,
          clicks_for: Clicks) -> list[dict[str, Any]]:
    """Simulated users searching through the service and clicking what they like, position
    bias and noise clicks included; logged with each shown result's team. Eight search
    at a time, as users do (the service batches their queries); each session draws from
    its own seed, so the log is the same whatever order the answers come in."""
    import urllib.parse
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    queries = sorted(liked)

    def one(s: int) -> list[dict[str, Any]]:
        rng = random.Random(f"{seed}:{s}")
        query, session = rng.choice(queries), f"{day}-s{s}"
        params = urllib.parse.urlencode({"q": query, "k": 10, "session": session})
        with urllib.request.urlopen(f"{base}/search?{params}", timeout=60) as response:
            results = json.load(response)["results"]
        shown = [r["doc_id"] for r in results]
        return [{"event_id": f"{session}-{p}", "ts": f"{day}T{s // 3600:02d}:"
                 f"{s // 60 % 60:02d}:{s % 60:02d}Z", "session_id": session,
                 "query": query, "doc_id": result["doc_id"], "position": p,
                 "clicked": clicked, **({"team": result["team"]} if "team" in result else {})}
                for p, (result, clicked) in enumerate(zip(results, clicks_for(
                    shown, {liked[query]: 1}, False, rng), strict=True), start=1)]

    with ThreadPoolExecutor(8) as pool:
        return [row for rows in pool.map(one, range(sessions)) for row in rows]


def test_users_promote_a_better_candidate_and_the_watch_rolls_back_a_worse_one(
        tmp_path: Path, sim_logs: Path, tiny_beir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    logs = first_week_logs(tmp_path, sim_logs, "day-1.jsonl")
    # The pool can never be read offline here (min_holdout_queries), so only users can
    # promote; no harm margin a 3-step fine-tune could cross. Half the queries are pool
    # queries, and every session of one is interleaved.
    config = make_home(tmp_path / "home", logs, tiny_beir / "corpus.jsonl",
                       min_holdout_queries=10_000, harm_margin=1.0, holdout_fraction=0.5,
                       canary_share=0.5, training={"max_steps": 6, "batch_size": 8,
                                                   "precision": "fp32"})
    settings = load_settings(config)
    production = Production.from_settings(settings)
    texts = [json.loads(line)["text"] for line in
             (tiny_beir / "queries.jsonl").read_text().splitlines()]
    pool = [q for q in texts if in_eval_pool(normalize_query(q), settings.holdout_fraction)]
    clicks_for = shared_clicks()

    first = run(config, reason="day 1")
    assert first["outcome"] == "kept" and first["offline"] == "canary"
    assert "only" in first["decision_reason"] and "queries; at least" in first["decision_reason"]
    assert first["canary_started"] == first["candidate_version"] == "2"
    assert production.state().canaries == ("2",)
    # on-call can stop it (and nothing else moves); started again for the rest
    assert main(["stop-canary", "--reason", "looks odd", "--config", str(config)]) == 0
    assert production.state().canaries == () and production.state().champion == "1"
    assert main(["stop-canary", "--reason", "again", "--config", str(config)]) == 3
    production.start_canary("2")

    with webhook() as (alert_url, alerts), service(settings) as (base, live):
        monkeypatch.setenv("EMBEDLOOP_ALERT_WEBHOOK", alert_url)
        wait_for(live, "1", {"canary"})
        liked = what_users_like(settings, "2", "1", pool)
        assert len(liked) >= 5, liked  # v2 ranks differently on enough pool queries
        rows = users(base, liked, 400, "2026-03-20", 1, clicks_for)
        assert {r.get("team") for r in rows} == {"1", "2", None}
        (logs / "day-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

        second = run(config, reason="day 2")
        assert second["outcome"] == "promoted", second["decision_reason"]
        assert second["canary_promoted"] == "2" and second["champion_version"] == "2"
        canary = next(c for c in second["online"] if c["source"] == "canary")
        assert canary["action"] == "promote" and "users prefer the candidate" in canary[
            "reason"]
        assert canary["metrics"]["canary.wins"] > canary["metrics"]["canary.losses"]
        state = production.state()
        assert (state.champion, state.watched_against) == ("2", "1") and state.aligned
        # the batch trained v3 from the new champion, and v3 is the canary now
        assert second["judged_against"] == "2" and second["canary_started"] == "3"
        assert state.canaries == ("3",)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["status", "--config", str(config)]) == 0
        assert "watch       v2 interleaved with v1" in out.getvalue()
        assert "canary      v3 interleaved with v2" in out.getvalue()
        plots = {a.path for a in production.registry.client.list_artifacts(
            second["mlflow_run_id"], "online")}
        assert plots == {"online/canary-v2.png"}

        # Now users prefer what v1 ranks above v2: the watch's sessions say so.
        wait_for(live, "2", {"watch", "canary"})
        liked = what_users_like(settings, "1", "2", pool)
        rows = users(base, liked, 600, "2026-03-21", 2, clicks_for)
        assert {"1", "2", "3"} <= {r.get("team") for r in rows}  # watch and canary sessions
        (logs / "day-3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        third = run(config, reason="day 3")
        assert third["outcome"] == "rolled back", [c["reason"] for c in third["online"]]
        assert third["rolled_back"] == ["2", "1"] and third["champion_version"] == "1"
        watch = next(c for c in third["online"] if c["source"] == "watch")
        assert watch["action"] == "rollback" and "users prefer the previous one" in watch[
            "reason"]
        # v3, judged against v2, is void; the batch trained v4 from v1, now its canary
        state = production.state()
        assert (state.champion, state.live_index, state.canaries) == ("1", "v0001", ("4",))
        assert third["judged_against"] == "1" and third["canary_started"] == "4"
        assert "rolled back from v2 to v1" in production.registry.version_info(
            "3").tags["canary_outcome"]
        assert len(alerts) == 1 and alerts[0]["event"] == "watch rollback"
        assert "rolled champion v2 back to v1" in alerts[0]["text"]
        wait_for(live, "1", {"canary"})
