"""The search service's core: the live pair (the champion model and the index it built),
kept warm, followed as production moves, and measured.

A request reads the current pair once and answers from it alone, naming it. A swap loads
the new pair beside the old one and replaces it with one reference assignment, so a
request is answered by the old pair or the new, never a mix. A new pair that cannot be
loaded (damaged index, unreadable model) is not swapped in: the old pair keeps serving,
health says so, and the failure is reported once per wanted pair (then retried slowly).

Its opponents (production/champion.py: the canaries, and the previous champion while the
champion is on watch) are kept warm beside it. An interleaved session (`canary_share` of
all sessions, drawn from sessions of evaluation-pool queries: interleaving.py) gets a
team-draft mix of the champion's ranking and one opponent's, each result labelled with
the model version that placed it: the `team` the front end logs and the next run
credits. With several opponents, a stable hash of the session picks one.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embedloop.judge.interleaving import interleaved_session, pick_opponent, session_rng, team_draft
from embedloop.models.encoding import encode
from embedloop.production.champion import Opponent, Production
from embedloop.search.retrieval import Hit, Retriever

logger = logging.getLogger("embedloop.serve.service")

# Latency histogram buckets, seconds (Prometheus `le` labels).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class LivePair:
    retriever: Retriever
    model_version: str
    index_version: str
    loaded_at: float

    @functools.cached_property
    def ranker(self) -> dict[str, Any]:
        """What it ranks with: the vectors alone, or fused with BM25 (and how)."""
        lexical = self.retriever.index.lexical
        if lexical is None:
            return {"kind": "dense"}
        return {"kind": "hybrid", "fusion": asdict(lexical.fusion),
                "analyzer": asdict(lexical.sparse.analyzer)}


@dataclass
class Metrics:
    """Counters and a latency histogram per endpoint, in Prometheus text format."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    latency: dict[str, list[int]] = field(default_factory=dict)  # cumulative per bucket
    latency_sum: dict[str, float] = field(default_factory=dict)
    swaps: int = 0
    swap_failures: int = 0
    interleaved: int = 0  # searches answered with a mix of the champion and an opponent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1
            counts = self.latency.setdefault(endpoint, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds

    def render(self, pair: LivePair | None, degraded: bool,
               opponents: Sequence[tuple[str, LivePair]] = ()) -> str:
        lines = ["# HELP embedloop_requests_total Requests answered, by endpoint and status.",
                 "# TYPE embedloop_requests_total counter"]
        with self.lock:
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'embedloop_requests_total{{endpoint="{endpoint}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP embedloop_request_seconds Request latency.",
                      "# TYPE embedloop_request_seconds histogram"]
            for endpoint, counts in sorted(self.latency.items()):
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += n
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'embedloop_request_seconds_bucket{{endpoint="{endpoint}",'
                                 f'le="{le}"}} {total}')
                lines.append(f'embedloop_request_seconds_sum{{endpoint="{endpoint}"}} '
                             f"{self.latency_sum[endpoint]:.6f}")
                lines.append(f'embedloop_request_seconds_count{{endpoint="{endpoint}"}} {total}')
            lines += ["# HELP embedloop_swaps_total Pairs swapped in since start.",
                      "# TYPE embedloop_swaps_total counter", f"embedloop_swaps_total {self.swaps}",
                      "# HELP embedloop_swap_failures_total New pairs that could not be loaded.",
                      "# TYPE embedloop_swap_failures_total counter",
                      f"embedloop_swap_failures_total {self.swap_failures}"]
        lines += _pair_gauge("embedloop_live_info", "The pair answering requests.", pair)
        lines += ["# HELP embedloop_degraded 1 while production moved to a pair this service "
                  "could not load (it serves the last good pair).",
                  "# TYPE embedloop_degraded gauge", f"embedloop_degraded {int(degraded)}"]
        lines += ["# HELP embedloop_opponent_info A ranker interleaved with the champion "
                  "for a share of sessions: a canary, or the previous champion on watch.",
                  "# TYPE embedloop_opponent_info gauge"]
        lines += [f'embedloop_opponent_info{{kind="{kind}",model_version="{p.model_version}",'
                  f'index_version="{p.index_version}"}} 1' for kind, p in opponents]
        lines += ["# HELP embedloop_interleaved_total Searches answered with a team-draft "
                  "mix of the champion and an opponent.",
                  "# TYPE embedloop_interleaved_total counter",
                  f"embedloop_interleaved_total {self.interleaved}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Answer:
    pair: LivePair  # the champion's pair, which answered (with the canary, if any)
    hits: list[Hit]
    # per hit, the model version that placed it (None: both would have, see team_draft)
    teams: list[str | None] | None = None
    opponent: LivePair | None = None  # the other team's pair, for an interleaved session
    kind: str = ""  # the opponent's: "canary" or "watch"


@dataclass(frozen=True)
class Pending:
    """A query on its way through the batcher: the champion's search, and an opponent's
    when the session is interleaved."""

    pair: LivePair
    champion: Future[list[Hit]]
    k: int
    session: str = ""
    query: str = ""
    opponent_pair: LivePair | None = None
    opponent: Future[list[Hit]] | None = None
    kind: str = ""

    def answer(self, champion_hits: list[Hit], opponent_hits: list[Hit] | None) -> Answer:
        if self.opponent_pair is None or opponent_hits is None:
            return Answer(self.pair, champion_hits)
        teams = (self.pair.model_version, self.opponent_pair.model_version)
        by_team = {teams[0]: {h.doc_id: h for h in champion_hits},
                   teams[1]: {h.doc_id: h for h in opponent_hits}}
        mixed = team_draft([h.doc_id for h in champion_hits],
                           [h.doc_id for h in opponent_hits], self.k,
                           session_rng(self.session, self.query), teams)
        return Answer(self.pair, [by_team[team or teams[0]][doc] for doc, team in mixed],
                      [team for _, team in mixed], self.opponent_pair, self.kind)

    def result(self) -> Answer:
        return self.answer(self.champion.result(),
                           self.opponent.result() if self.opponent is not None else None)


def _pair_gauge(name: str, help_text: str, pair: LivePair | None) -> list[str]:
    """A Prometheus info gauge naming a pair (no sample when there is none)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    if pair is not None:
        lines.append(f'{name}{{model_version="{pair.model_version}",'
                     f'index_version="{pair.index_version}"}} 1')
    return lines


# a query waiting for the batcher: its pair, text, k, answer, and whether it wants sides
Waiting = tuple[LivePair, str, int, Future[list[Hit]], bool]


class QueryBatcher:
    """Concurrent queries answered together: one worker thread takes every query waiting
    (up to `max_batch`), encodes them in one model call per pair and searches them in
    one index call. On a CPU a batch of 8 encodes ~2.7x faster than 8 single queries
    (BENCHMARKS.md), and one encoder at a time is what 2 cores can run anyway. At low
    load a query waits for nobody: the batch is whatever is queued when the worker is free.
    """

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[Waiting] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="embedloop-batcher",
                                        daemon=True)
        self._worker.start()

    def submit(self, pair: LivePair, text: str, k: int, sides: bool = False
               ) -> Future[list[Hit]]:
        done: Future[list[Hit]] = Future()
        self._queue.put((pair, text, k, done, sides))
        return done

    def _work(self) -> None:
        while True:
            waiting = [self._queue.get()]
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_pair: dict[int, list[Waiting]] = {}
            for item in waiting:  # a swap mid-queue: each query keeps the pair it was given
                by_pair.setdefault(id(item[0]), []).append(item)
            for items in by_pair.values():
                try:
                    # each side's score on a hybrid ranker's hits, if any query asked
                    found = items[0][0].retriever.search(
                        [item[1] for item in items], max(item[2] for item in items),
                        sides=any(item[4] for item in items))
                except Exception as exc:
                    for item in items:
                        item[3].set_exception(exc)
                    continue
                for (_, _, k, done, _), hits in zip(items, found, strict=True):
                    done.set_result(hits[:k])


class LiveSearch:
    """The champion and its index, warm, following production.

    `refresh()` looks at production (the registry alias and the index manifests, no
    weights) and swaps in a new pair when it moved; `watch()` calls it every `poll_s`
    seconds in a daemon thread. `on_failure(message)` is called once per pair that cannot
    be loaded (an alert); a failed pair is tried again after `retry_s`."""

    def __init__(self, production: Production, *, device: str | None = None,
                 max_seq_length: int | None = None, batch_size: int = 64,
                 poll_s: float = 2.0, retry_s: float = 60.0, max_batch: int = 32,
                 canary_share: float = 0.0, pool_fraction: float = 0.2,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.production = production
        self.device, self.max_seq_length, self.batch_size = device, max_seq_length, batch_size
        self.poll_s, self.retry_s = poll_s, retry_s
        self.on_failure = on_failure or (lambda message: None)
        self.metrics = Metrics()
        self.batcher = QueryBatcher(max_batch)
        self.pair: LivePair | None = None
        # (the champion version they are interleaved with, [(kind, pair)]): a canary, or
        # the previous champion while the champion is on watch
        self.opponents: tuple[str, tuple[tuple[str, LivePair], ...]] | None = None
        self.canary_share, self.pool_fraction = canary_share, pool_fraction
        self.opponent_error: str | None = None
        self.wanted: tuple[str, str] | None = None
        self.error: str | None = None  # why `wanted` is not being served
        self._failed_at: dict[tuple[str, str], float] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- answering ---------------------------------------------------------------
    def current(self) -> LivePair:
        pair = self.pair  # one read: the whole request uses this pair
        if pair is None:
            raise RuntimeError(self.error or "no model loaded yet")
        return pair

    def submit(self, text: str, k: int, session: str = "", sides: bool = False) -> Pending:
        """The pair(s) that will answer, and the answers to come (async servers await
        them). The opponents are read once too, and only used with the champion they are
        interleaved with."""
        pair, opponents = self.current(), self.opponents
        pending = Pending(pair, self.batcher.submit(pair, text, k, sides), k, session, text)
        if (opponents is not None and opponents[0] == pair.model_version and opponents[1]
                and interleaved_session(session, text, self.canary_share,
                                        self.pool_fraction)):
            kind, other = opponents[1][pick_opponent(session, len(opponents[1]))]
            with self.metrics.lock:
                self.metrics.interleaved += 1
            return dataclasses.replace(pending, opponent_pair=other, kind=kind,
                                       opponent=self.batcher.submit(other, text, k, sides))
        return pending

    def search(self, text: str, k: int, session: str = "") -> Answer:
        return self.submit(text, k, session).result()

    def embed(self, texts: Sequence[str], role: str = "query") -> tuple[LivePair, np.ndarray]:
        """Texts encoded by the live model as queries or as documents (an asymmetric
        model encodes them differently), at its index's precision."""
        pair = self.current()
        retriever = pair.retriever
        return pair, encode(retriever.model, texts, role=role, batch_size=self.batch_size,
                            precision=retriever.index.precision)

    @property
    def degraded(self) -> bool:
        return self.error is not None and self.pair is not None

    @property
    def opponent_pairs(self) -> tuple[tuple[str, LivePair], ...]:
        opponents = self.opponents
        return opponents[1] if opponents is not None else ()

    def health(self) -> dict[str, Any]:
        pair, opponents = self.pair, self.opponents
        return {"status": "ok" if self.error is None else
                ("degraded" if pair is not None else "unavailable"),
                "serving": None if pair is None else {
                    "model_version": pair.model_version, "index_version": pair.index_version,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pair.loaded_at))},
                "production": None if self.wanted is None else {
                    "model_version": self.wanted[0], "index_version": self.wanted[1]},
                "interleaved": [] if opponents is None else [
                    {"kind": kind, "model_version": p.model_version,
                     "index_version": p.index_version, "against": opponents[0]}
                    for kind, p in opponents[1]],
                "canary_share": self.canary_share,
                "interleaving_error": self.opponent_error,
                "error": self.error}

    # -- following production ------------------------------------------------------
    def refresh(self) -> bool:
        """Swap in production's pair if it moved, and follow its opponents; True if a
        new champion pair now serves."""
        with self._refresh_lock:
            swapped = self._follow_champion()
            if self.canary_share > 0:
                self._follow_opponents()
            return swapped

    def _follow_opponents(self) -> None:
        """Load the opponents production names for the serving champion (keeping those
        already warm), and drop the rest. One that cannot be loaded is not interleaved
        (the champion serves without it); it is reported once, and does not make the
        service degraded."""
        pair = self.pair
        if pair is None:
            self.opponents = None
            return
        try:
            wanted: list[Opponent] = self.production.opponents(pair.model_version)
        except Exception as exc:
            self.opponent_error = f"cannot read the canaries and the watch: {exc}"
            return
        current = self.opponents
        warm = {(p.model_version, p.index_version): p
                for _, p in (current[1] if current and current[0] == pair.model_version
                             else ())}
        loaded: list[tuple[str, LivePair]] = []
        errors: list[str] = []
        for opponent in wanted:
            key = (opponent.version, opponent.index_version)
            if key in warm:
                loaded.append((opponent.kind, warm[key]))
                continue
            failed = self._failed_at.get(key)
            if failed is not None and time.monotonic() - failed < self.retry_s:
                errors.append(f"v{opponent.version} could not be loaded")
                continue
            try:
                loaded.append((opponent.kind, self._load(*key)))
                logger.info("%s v%s (index %s) interleaved with champion v%s", opponent.kind,
                            opponent.version, opponent.index_version, pair.model_version)
            except Exception as exc:
                self._failed_at[key] = time.monotonic()
                message = (f"cannot load {opponent.kind} v{opponent.version} with index "
                           f"{opponent.index_version}: {type(exc).__name__}: {exc}; the "
                           f"champion serves without it")
                logger.error("%s", message)
                errors.append(message)
        self.opponents = (pair.model_version, tuple(loaded))
        self.opponent_error = "; ".join(errors) or None

    def _follow_champion(self) -> bool:
        """Swap in the champion's pair if production moved; True if it did."""
        try:
            wanted = self.production.champion_pair()
        except Exception as exc:  # the registry is down, or production is broken
            self._fail(None, f"cannot read production: {type(exc).__name__}: {exc}")
            return False
        self.wanted = wanted
        pair = self.pair
        if pair is not None and (pair.model_version, pair.index_version) == wanted:
            self.error = None
            return False
        failed = self._failed_at.get(wanted)
        if failed is not None and time.monotonic() - failed < self.retry_s:
            return False
        try:
            new = self._load(*wanted)
        except Exception as exc:
            self._failed_at[wanted] = time.monotonic()
            with self.metrics.lock:
                self.metrics.swap_failures += 1
            self._fail(wanted, f"cannot load model v{wanted[0]} with index {wanted[1]}: "
                               f"{type(exc).__name__}: {exc}")
            return False
        self.pair = new  # the swap: one assignment
        self._failed_at.pop(wanted, None)
        self.error = None
        with self.metrics.lock:
            self.metrics.swaps += 1
        logger.info("serving model v%s with index %s%s", wanted[0], wanted[1],
                    f" (was v{pair.model_version} / {pair.index_version})" if pair else "")
        return True

    def _load(self, model_version: str, index_version: str) -> LivePair:
        from embedloop.models.encoding import load_model

        index = self.production.load_index(index_version, model_version)
        model = load_model(self.production.model_path(model_version), self.device,
                           self.max_seq_length)
        retriever = Retriever(model, index, self.batch_size)
        retriever.search(["warm-up"], 1)  # first-call costs are paid before the swap
        return LivePair(retriever, model_version, index_version, time.time())

    def _fail(self, wanted: tuple[str, str] | None, message: str) -> None:
        first = message != self.error
        self.error = message
        if first:
            serving = (f"; still serving v{self.pair.model_version} / {self.pair.index_version}"
                       if self.pair else "; nothing to serve")
            logger.error("%s%s", message, serving)
            self.on_failure(message + serving)

    def watch(self) -> None:
        """Follow production in a daemon thread until `stop()`."""
        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="embedloop-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
