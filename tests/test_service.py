"""The search service, for real: uvicorn on loopback, the real MiniLM, real FAISS indexes,
a real MLflow registry. Two registered versions with different weights (v2 is v1 with its
weights nudged), so an answer that mixed one version's model with the other's index would
show in its scores."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedloop.config import load_settings
from embedloop.flows.cli import _ask_the_service
from embedloop.index.build import with_fusion
from embedloop.index.faiss_index import FaissIndex, FaissIndexStore
from embedloop.ingest.corpus import document_texts, load_corpus
from embedloop.learn.pairs import in_eval_pool, normalize_query
from embedloop.models.encoding import encode, load_model
from embedloop.production.champion import Production
from embedloop.production.registry import FUSION_WEIGHT, Registry, seal
from embedloop.search.hybrid import LexicalSpec
from embedloop.search.retrieval import Retriever
from embedloop.serve.api import create_app
from embedloop.serve.service import LiveSearch

TOKEN = "test-token"
QUERY = "protein folding in cancer cells"


class Service:
    def __init__(self, production: Production, live: LiveSearch, url: str,
                 expected: dict[tuple[str, str], list[float]], alerts: list[str],
                 titles: dict[str, str], home: Path, port: int) -> None:
        self.production, self.live, self.url = production, live, url
        self.expected, self.alerts, self.titles = expected, alerts, titles
        self.home, self.port = home, port

    def get(self, path: str, token: str | None = TOKEN, **params: Any) -> tuple[int, Any]:
        request = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        return self._send(request, token)

    def post(self, path: str, body: dict[str, Any], token: str | None = TOKEN
             ) -> tuple[int, Any]:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        return self._send(request, token)

    @staticmethod
    def _send(request: urllib.request.Request, token: str | None) -> tuple[int, Any]:
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def serving(self) -> tuple[str, str] | None:
        found = self.live.health()["serving"]
        return (found["model_version"], found["index_version"]) if found else None

    def wait_for(self, pair: tuple[str, str], timeout: float = 20.0) -> float:
        started = time.monotonic()
        while self.serving() != pair:
            assert time.monotonic() - started < timeout, (pair, self.live.health())
            time.sleep(0.05)
        return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_beir: Path,
            base_model_path: str) -> Iterator[Service]:
    import uvicorn

    root = tmp_path_factory.mktemp("service")  # laid out as a deployment's home
    registry = Registry(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "svc",
                        root / "mlruns" / "artifacts")
    registry.client.create_registered_model("svc")
    production = Production(registry, FaissIndexStore(root / ".embedloop" / "indexes"),
                            root / ".embedloop" / "models")
    corpus = load_corpus(tiny_beir / "corpus.jsonl").head(80)
    texts, ids = document_texts(corpus), list(corpus["doc_id"])
    nudged = tmp_path_factory.mktemp("nudged")
    model = load_model(base_model_path, "cpu", 96)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.save(str(nudged))
    expected: dict[tuple[str, str], list[float]] = {}
    # v1 dense; v2 a hybrid ranker: BM25 beside its vectors, fused with its own weight
    # (its tag, not the index version's 0.5)
    for path, weight in ((base_model_path, None), (str(nudged), 0.7)):
        # A registered version whose weights are the local copy a deployment keeps (what
        # the service loads); uploading them as an MLflow artifact would only cost time.
        run_id = registry.start_run("test", {})
        version = str(registry.client.create_model_version(
            "svc", source=f"runs:/{run_id}/model", run_id=run_id,
            tags={} if weight is None else {FUSION_WEIGHT: str(weight)}).version)
        copy = root / ".embedloop" / "models" / f"v{version}"
        shutil.copytree(path, copy / "model")
        seal(copy)
        model = load_model(path, "cpu", 96)
        vectors = encode(model, texts, role="document", precision="fp32")
        index = FaissIndex.build(vectors, ids, "fp32",
                                 titles=list(corpus["title"]))
        if weight is not None:
            index.lexical = LexicalSpec().build(texts, ids)
        manifest = production.save_index(index, version, "c")
        served = index if weight is None else with_fusion(index, weight)
        hits = Retriever(model, served).search([QUERY], 3)[0]
        expected[version, manifest.version] = [h.score for h in hits]
    production.promote("1")

    alerts: list[str] = []
    live = LiveSearch(production, device="cpu", max_seq_length=96, poll_s=0.1, retry_s=3600,
                      canary_share=0.5, pool_fraction=1.0, on_failure=alerts.append)
    live.refresh()
    live.watch()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(live, token=TOKEN, max_query_chars=200, max_k=100), host="127.0.0.1",
        port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield Service(production, live, f"http://127.0.0.1:{port}", expected, alerts,
                  dict(zip(ids, corpus["title"], strict=True)), root, port)
    server.should_exit = True
    live.stop()
    thread.join(timeout=10)


def test_search_names_the_pair_that_answered(service: Service) -> None:
    doc_id, title = next((d, t) for d, t in service.titles.items() if len(t) > 20)
    status, body = service.get("/search", q=title, k=5)
    assert status == 200, body
    assert (body["model_version"], body["index_version"]) == ("1", "v0001")
    assert len(body["results"]) == 5
    assert body["results"][0]["doc_id"] == doc_id  # a document's own title finds it
    assert body["results"][0]["title"] == title


@pytest.mark.parametrize("token", [None, "wrong"])
def test_without_the_token_nothing_is_answered(service: Service, token: str | None) -> None:
    for status, body in (service.get("/search", token=token, q="protein"),
                         service.post("/embed", {"texts": ["protein"]}, token=token)):
        assert status == 401 and body == {"error": "missing or wrong bearer token"}
    assert service.get("/healthz", token=None)[0] == 200  # probes need no token


@pytest.mark.parametrize("params, why", [
    ({"q": "protein", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"q": "protein", "k": 101}, "k: Input should be less than or equal to 100"),
    ({"q": "protein", "k": "ten"},
     "k: Input should be a valid integer, unable to parse string as an integer"),
    ({"k": 5}, "q: Field required"),
    ({"q": "   "}, "q: the query is blank"),
    ({"q": "x" * 201}, "q: String should have at most 200 characters")])
def test_bad_search_parameters_get_a_one_line_reason(service: Service, params: dict[str, Any],
                                                     why: str) -> None:
    status, body = service.get("/search", **params)
    assert (status, body) == (422, {"error": why})


def test_embed_gives_the_live_models_vectors(service: Service, base_model_path: str) -> None:
    status, body = service.post("/embed", {"texts": ["protein folding", "a cell"]})
    assert status == 200 and body["dim"] == 384 and body["model_version"] == "1"
    want = encode(load_model(base_model_path, "cpu", 96), ["protein folding", "a cell"],
                  role="query")
    np.testing.assert_allclose(np.array(body["embeddings"]), want, atol=1e-5)
    assert service.post("/embed", {"texts": []})[0] == 422
    status, body = service.post("/embed", {"texts": ["a"] * 257})
    assert status == 422 and body["error"] == "texts: at most 256 per request, got 257"


def test_the_cli_asks_the_service_of_its_own_deployment(service: Service, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`embedloop search` answers through a running service (milliseconds, not a model
    load), but only through this deployment's: another home's search loads its own."""
    monkeypatch.setenv("EMBEDLOOP_API_TOKEN", TOKEN)
    ours = load_settings(None, home=str(service.home), model_name="svc", api_port=service.port)
    answer = _ask_the_service(ours, QUERY, 3)
    assert answer is not None and (answer["model_version"], answer["index_version"]) == (
        "1", "v0001")
    other = load_settings(None, home=str(tmp_path), model_name="svc", api_port=service.port)
    assert _ask_the_service(other, QUERY, 3) is None


def test_the_cli_still_asks_the_service_after_a_query_side_promotion(
        service: Service, base_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query-side champion searches the index an earlier version's document encoder
    built, so the live index's builder is not the champion: the service is still ours."""
    monkeypatch.setenv("EMBEDLOOP_API_TOKEN", TOKEN)
    registry = service.production.registry
    run_id = registry.start_run("test", {})
    version = str(registry.client.create_model_version(
        "svc", source=f"runs:/{run_id}/model", run_id=run_id).version)
    registry.tag_version(version, document_encoder="1")  # trained query-side from v1
    copy = service.home / ".embedloop" / "models" / f"v{version}"
    shutil.copytree(base_model_path, copy / "model")
    seal(copy)
    service.production.promote(version)
    try:
        service.wait_for((version, "v0001"))
        ours = load_settings(None, home=str(service.home), model_name="svc",
                             api_port=service.port)
        answer = _ask_the_service(ours, QUERY, 3)
        assert answer is not None and (answer["model_version"], answer["index_version"]) == (
            version, "v0001")
    finally:
        service.production.rollback()
        service.wait_for(("1", "v0001"))


def test_promotions_and_rollbacks_swap_under_load_without_mixing(service: Service) -> None:
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(service.get("/search", q=QUERY, k=3))

    clients = [threading.Thread(target=client) for _ in range(8)]
    for c in clients:
        c.start()
    swap_seconds = []
    try:
        for _ in range(3):
            time.sleep(0.3)
            service.production.promote("2")
            swap_seconds.append(service.wait_for(("2", "v0002")))
            time.sleep(0.3)
            service.production.rollback()
            swap_seconds.append(service.wait_for(("1", "v0001")))
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    seen = {(b["model_version"], b["index_version"]) for _, b in answers}
    assert seen == set(service.expected)  # both pairs answered, and nothing else
    for _, body in answers:  # each answer's scores are its named pair's own
        pair = (body["model_version"], body["index_version"])
        np.testing.assert_allclose([r["score"] for r in body["results"]],
                                   service.expected[pair], atol=1e-4)
    assert max(swap_seconds) < 10, swap_seconds


def test_a_hybrid_ranker_shows_each_sides_score_on_request(service: Service) -> None:
    status, body = service.get("/search", q=QUERY, k=3, sides="true")
    assert status == 200 and body["ranker"] == {"kind": "dense"}
    assert all("sides" not in r for r in body["results"])  # one side: nothing to show
    service.production.promote("2")
    try:
        service.wait_for(("2", "v0002"))
        status, body = service.get("/search", q=QUERY, k=3, sides="true")
        assert status == 200 and body["ranker"]["kind"] == "hybrid"
        assert body["ranker"]["fusion"]["weight"] == 0.7  # v2's own, not the index's 0.5
        for result in body["results"]:
            assert set(result["sides"]) == {"dense", "bm25"}
        top = body["results"][0]["sides"]  # the fused winner was ranked by at least one
        assert top["dense"] is not None or top["bm25"] is not None
        assert all("sides" not in r for r in service.get("/search", q=QUERY, k=3)[1]["results"])
    finally:
        service.production.rollback()
        service.wait_for(("1", "v0001"))


def interleaved(service: Service) -> list[dict[str, object]]:
    return service.live.health()["interleaved"]


def test_a_canary_is_interleaved_for_its_share_of_sessions(service: Service) -> None:
    """Canary v2 against champion v1, for half the sessions (the hash of the session id;
    every query counts as a pool query here): those get a team-draft mix, each result
    labelled with the version that placed it; the others, and requests without a
    session, get the champion's list alone. After its promotion the new champion is on
    watch: interleaved with the one it replaced."""
    production = service.production
    assert production.state().champion == "1"
    champion = service.get("/search", q=QUERY, k=10)[1]  # no session: never interleaved
    production.start_canary("2")
    started = time.monotonic()
    while not interleaved(service):
        assert time.monotonic() - started < 20, service.live.health()
        time.sleep(0.05)
    assert interleaved(service) == [{"kind": "canary", "model_version": "2",
                                     "index_version": "v0002", "against": "1"}]
    answers = [service.get("/search", q=QUERY, k=10, session=f"user-{i}")[1]
               for i in range(40)]
    mixed = [a for a in answers if "interleaved" in a]
    assert 8 <= len(mixed) <= 32  # about half
    for body in answers:
        if "interleaved" not in body:  # a plain session: the champion's own list, no teams
            assert body["results"] == champion["results"]
            continue
        assert body["interleaved"] == {"kind": "canary", "model_version": "2",
                                       "index_version": "v0002"}
        assert body["model_version"] == "1"
        docs = [r["doc_id"] for r in body["results"]]
        teams = [r.get("team") for r in body["results"]]  # none: both would place it
        assert len(docs) == len(set(docs)) == 10 and set(teams) == {"1", "2", None}
        assert abs(teams.count("1") - teams.count("2")) <= 1
        # what the champion placed, or both would have, comes in the champion's order
        ours = [r["doc_id"] for r in body["results"] if r.get("team") in ("1", None)]
        ranking = [r["doc_id"] for r in champion["results"]]
        assert ours == [d for d in ranking if d in ours]
    again = service.get("/search", q=QUERY, k=10, session="user-0")[1]
    assert again == answers[0]  # a session sees the same list when it asks again
    metrics = service.get("/metrics", token=None)[1]
    assert ('embedloop_opponent_info{kind="canary",model_version="2",index_version="v0002"} 1'
            in metrics)
    assert f"embedloop_interleaved_total {len(mixed) + ('interleaved' in again)}" in metrics

    # Only sessions of pool queries are interleaved: at a pool of 20%, a query outside it
    # never is (it may be a query some candidate trained on).
    service.live.pool_fraction = 0.2
    try:
        outside = next(q for q in (f"{QUERY} {i}" for i in range(100))
                       if not in_eval_pool(normalize_query(q), 0.2))
        assert all("interleaved" not in service.get("/search", q=outside, k=10,
                                                    session=f"user-{i}")[1]
                   for i in range(20))
    finally:
        service.live.pool_fraction = 1.0

    production.promote("2")  # the canary won: it is the champion now, on watch against v1
    service.wait_for(("2", "v0002"))
    while interleaved(service) != [{"kind": "watch", "model_version": "1",
                                    "index_version": "v0001", "against": "2"}]:
        assert time.monotonic() - started < 40, service.live.health()
        time.sleep(0.05)
    watched = [service.get("/search", q=QUERY, k=10, session=f"user-{i}")[1]
               for i in range(20)]
    assert any(b.get("interleaved", {}).get("kind") == "watch" for b in watched)
    production.rollback()
    service.wait_for(("1", "v0001"))
    while interleaved(service):  # rolled back: v1 is not watched, nothing is interleaved
        assert time.monotonic() - started < 60, service.live.health()
        time.sleep(0.05)


def test_a_damaged_new_version_is_refused_while_the_old_keeps_serving(
        service: Service) -> None:
    production = service.production
    before = service.serving()
    assert before is not None
    # v3: registered, and an index on disk whose vectors file is garbage
    run_id = production.registry.start_run("test", {})
    v3 = str(production.registry.client.create_model_version(
        "svc", source=f"runs:/{run_id}/model", run_id=run_id).version)
    vectors = np.eye(384, dtype=np.float32)[:len(service.titles)]  # 80 documents
    manifest = production.save_index(FaissIndex.build(vectors, list(service.titles), "fp32"),
                                     v3, "c")
    index_dir = Path(production.store.root) / "versions" / manifest.version
    (index_dir / "index.faiss").write_bytes(b"not an index")
    production.promote(v3)
    started = time.monotonic()
    while service.live.health()["status"] != "degraded":
        assert time.monotonic() - started < 10, service.live.health()
        time.sleep(0.05)
    health = service.live.health()
    assert health["production"] == {"model_version": v3, "index_version": manifest.version}
    assert f"v{v3}" in health["error"] and "damaged" in health["error"]
    status, body = service.get("/search", q=QUERY, k=3)  # the old pair answers
    assert status == 200 and (body["model_version"], body["index_version"]) == before
    metrics = service.get("/metrics", token=None)[1]
    assert "embedloop_degraded 1" in metrics and "embedloop_swap_failures_total 1" in metrics
    assert f'embedloop_live_info{{model_version="{before[0]}",' in metrics
    assert len(service.alerts) == 1 and "still serving" in service.alerts[0]
    production.rollback()  # production back on the pair that is serving: healthy again
    service.wait_for(before)
    while service.live.health()["status"] != "ok":
        assert time.monotonic() - started < 20, service.live.health()
        time.sleep(0.05)
