"""The search service over HTTP (FastAPI): what `embedloop api` runs.

    GET  /search?q=&k=&session=   the live pair's top k, naming the pair that answered;
                                  for an interleaved session, a team-draft mix of the
                                  champion and a canary (or, on watch, the previous
                                  champion), each result's `team` the version that placed it
    POST /embed                   {"texts": [...], "kind": "query"|"document"} -> vectors
    GET  /healthz                 ok | degraded (serving the last good pair) | unavailable
    GET  /metrics                 Prometheus text: latency histogram, requests by status,
                                  the live pair, swaps and failed swaps

A bad request gets a 4xx and a one-line reason, never a traceback. With a token
(EMBEDLOOP_API_TOKEN), /search and /embed need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from embedloop.errors import one_line
from embedloop.serve.service import LiveSearch, Metrics

TOKEN_ENV = "EMBEDLOOP_API_TOKEN"


class EmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    kind: Literal["query", "document"] = "query"


def create_app(live: LiveSearch, *, token: str | None = None, max_query_chars: int = 10_000,
               max_k: int = 1000, max_texts: int = 256) -> FastAPI:
    app = FastAPI(title="embedloop search", docs_url=None, redoc_url=None, openapi_url=None)

    # Both checks are async: FastAPI runs a plain `def` dependency on its thread pool, two
    # thread hand-offs per search for a few comparisons (BENCHMARKS.md: the hybrid ranker
    # under load).
    async def authorized(authorization: str | None = Header(default=None)) -> None:
        if token and not secrets.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token")

    async def serving() -> None:
        if live.pair is None:
            raise HTTPException(503, f"no model to serve yet: {live.error or 'loading'}")

    app.add_middleware(Measured, metrics=live.metrics)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": one_line(f"{where}: {first.get('msg', 'invalid')}")},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the "
                                      f"service log"}, status_code=500)

    @app.get("/search", dependencies=[Depends(authorized), Depends(serving)])
    async def search(q: str = Query(min_length=1, max_length=max_query_chars),
                     k: int = Query(10, ge=1, le=max_k), session: str = "",
                     sides: bool = False) -> JSONResponse:
        if not q.strip():
            raise HTTPException(422, "q: the query is blank")
        # Awaited, not run in a thread: the batcher's worker does the model's work.
        pending = live.submit(q, k, session, sides)
        champion = await asyncio.wrap_future(pending.champion)
        other = await asyncio.wrap_future(pending.opponent) if pending.opponent else None
        answer = pending.answer(champion, other)
        results = [{"doc_id": h.doc_id, "score": round(h.score, 6), "title": h.title}
                   for h in answer.hits]
        if sides:  # a hybrid ranker's raw score on each side (null: not in its top depth)
            for result, hit in zip(results, answer.hits, strict=True):
                if hit.sides is not None:
                    result["sides"] = {side: None if score is None else round(score, 6)
                                       for side, score in hit.sides.items()}
        for result, team in zip(results, answer.teams or (), strict=False):
            if team is not None:  # the model version that placed it; none if both would
                result["team"] = team
        body = {"results": results, "model": live.production.model_name,
                "model_version": answer.pair.model_version,
                "index_version": answer.pair.index_version,
                "ranker": answer.pair.ranker}
        if answer.opponent is not None:  # "canary" or "watch"
            body["interleaved"] = {"kind": answer.kind,
                                   "model_version": answer.opponent.model_version,
                                   "index_version": answer.opponent.index_version}
        # plain JSON already: returned as is, not walked again by FastAPI's encoder
        return JSONResponse(body)

    @app.post("/embed", dependencies=[Depends(authorized), Depends(serving)])
    def embed(body: EmbedRequest) -> dict[str, Any]:
        if len(body.texts) > max_texts:
            raise HTTPException(422, f"texts: at most {max_texts} per request, got "
                                     f"{len(body.texts)}")
        if any(len(t) > max_query_chars for t in body.texts):
            raise HTTPException(422, f"texts: each at most {max_query_chars} characters")
        # A query-side champion encodes queries and documents with different routes, and
        # a model with prompts (e5's "query: " / "passage: ") prefixes each kind with its own.
        pair, vectors = live.embed(body.texts, role=body.kind)
        return {"embeddings": vectors.round(6).tolist(), "dim": int(vectors.shape[1]),
                "kind": body.kind, "model_version": pair.model_version,
                "index_version": pair.index_version}

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        health = live.health()
        return JSONResponse(health, status_code=503 if live.pair is None else 200)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(live.metrics.render(live.pair, live.degraded,
                                                     live.opponent_pairs),
                                 media_type="text/plain; version=0.0.4")

    return app


class Measured:
    """Latency and status of every request, by route (plain ASGI: FastAPI's `middleware`
    decorator costs a task and a stream per request)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "other"), status,
                                 time.perf_counter() - started)
