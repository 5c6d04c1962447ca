"""Load test of the search service (`embedloop api`), SciFact size, on this machine.

1. Latency and throughput: 1, 8 and 32 concurrent clients, each sending SciFact test
   queries (k=10) back to back for --seconds.
2. Swaps under load: 16 clients search while production is promoted and rolled back
   --swaps times each. Every answer must be 200, and its scores must be those of the
   pair it names (a mixed answer, one model's query vector against the other's index,
   scores differently).
3. What batching concurrent queries would buy: the model encoding 8 queries one by one
   against one batch of 8, in this process.

The service runs as its own process (the real command), over a home with at least two
versions that have indexes: a protocol run's, e.g.

    .venv/bin/python -u bench/protocol.py --out bench/out/scifact --no-ceiling --cycles 1
    .venv/bin/python -u bench/load_test.py --home bench/out/scifact/home
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import REPO, read_jsonl, read_qrels  # noqa: E402

BIN = Path(sys.executable).parent


def get(url: str) -> tuple[int, dict[str, Any] | None, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = json.loads(response.read())
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = None, exc.code
    except OSError:
        body, status = None, 0
    return status, body, time.perf_counter() - started


def run_clients(base: str, queries: list[str], clients: int, seconds: float
                ) -> list[tuple[int, dict[str, Any] | None, float, str]]:
    """`clients` threads, each on its own keep-alive connection (as a front end's pool
    would be), sending queries back to back until `seconds` pass."""
    out: list[tuple[int, dict[str, Any] | None, float, str]] = []
    deadline = time.monotonic() + seconds
    host, port = urllib.parse.urlsplit(base).netloc.split(":")

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        i = offset
        while time.monotonic() < deadline:
            q = queries[i % len(queries)]
            started = time.perf_counter()
            try:
                connection.request("GET", f"/search?{urllib.parse.urlencode({'q': q, 'k': 10})}")
                response = connection.getresponse()
                data = response.read()
                status = response.status
                body = json.loads(data) if status == 200 else None
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                status, body = 0, None
            out.append((status, body, time.perf_counter() - started, q))
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=REPO / "bench/out/scifact/home")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--swaps", type=int, default=5)
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.models.encoding import encode
    from embedloop.production.champion import Production
    from embedloop.search.retrieval import Retriever

    settings = load_settings(args.config, home=str(args.home))
    production = Production.from_settings(settings)
    state = production.state()
    versions = [v for v in (state.champion, state.previous) if v]
    if len(versions) < 2:  # a protocol run that promoted leaves champion and previous
        raise SystemExit(f"{args.home} needs a champion and a previous version with indexes")
    queries_by_id = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    queries = [queries_by_id[q] for q in sorted(test)]
    # What each model answers through each index, query by query as the service encodes
    # them. An answer is consistent if its scores are nearest to those of the pair it
    # names; nearest to a cross pair (one model's query against the other's index), or to
    # the other pair, is a mixed answer. (Nearest, not equal: in bf16 a query encoded in
    # a batch scores up to ~1.5e-3 apart from the same query encoded alone.)
    # A hybrid ranker version is also its fusion weight (two query-side versions share an
    # index version but not their weights): (model, index, weight) names a pair.
    retrievers = {}
    for version in versions:
        retriever = production.retriever(version, max_seq_length=settings.max_seq_length)
        assert retriever.index.manifest is not None
        retrievers[version, retriever.index.manifest.version, weight_of(retriever)] = retriever
    expected: dict[tuple[str, str, float | None], dict[str, list[float]]] = {}
    for model_pair, by_model in retrievers.items():
        for index_pair, by_index in retrievers.items():
            mixed = Retriever(by_model.model, by_index.index, by_model.batch_size)
            expected[model_pair[0], index_pair[1], index_pair[2]] = {
                q: [h.score for h in mixed.search([q], 10)[0]] for q in queries}
    hybrid_share = time_the_sides(next(iter(retrievers.values())), queries)
    # 3. batching, in this process (before the service competes for the CPU)
    retriever = next(iter(retrievers.values()))
    model, precision = retriever.model, retriever.index.precision
    batch = queries[:8]
    encode(model, batch, role="query", precision=precision)  # warm-up
    one_by_one, batched = [], []
    for _ in range(5):
        started = time.perf_counter()
        for q in batch:
            encode(model, [q], role="query", precision=precision)
        one_by_one.append(time.perf_counter() - started)
        started = time.perf_counter()
        encode(model, batch, role="query", precision=precision)
        batched.append(time.perf_counter() - started)
    del retrievers, retriever, model

    # 1. latency and throughput, without and with batching of concurrent queries
    print(f"{len(queries)} SciFact test queries, k=10, {args.seconds:g} s per level")
    print("\n| batching | clients | requests | throughput req/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|---|")
    levels: dict[str, dict[int, dict[str, float]]] = {}
    for max_batch in (1, 32):
        server, base = serve(args, max_batch)
        try:
            run_clients(base, queries, 2, 3.0)  # warm-up
            levels[f"max_batch={max_batch}"] = rows = {}
            for clients in (1, 8, 32):
                answers = run_clients(base, queries, clients, args.seconds)
                took = [a[2] for a in answers if a[0] == 200]
                failed = sum(a[0] != 200 for a in answers)
                rows[clients] = row = {
                    "requests": len(answers), "rps": len(answers) / args.seconds,
                    "p50_ms": percentile_ms(took, 50), "p99_ms": percentile_ms(took, 99),
                    "failed": failed}
                print(f"| {'off' if max_batch == 1 else f'up to {max_batch}'} | {clients} | "
                      f"{len(answers)} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
                      f"{row['p99_ms']:.1f} | {failed} |", flush=True)
        finally:
            stop(server)

    # 2. swaps under load (batching on, the default)
    server, base = serve(args, 32)
    try:
        answers: list[tuple[int, dict[str, Any] | None, float, str]] = []
        done = threading.Event()
        load = threading.Thread(target=lambda: answers.extend(_until(done, base, queries, 16)))
        load.start()
        swap_s = []
        champion, previous = versions
        for _ in range(args.swaps):
            for act, wanted in (("rollback", previous), ("promote", champion)):
                time.sleep(1.0)
                if act == "rollback":
                    production.rollback()
                else:
                    production.promote(champion)
                t0 = time.monotonic()
                while True:
                    health = get(f"{base}/healthz")[1] or {}
                    serving = (health.get("serving") or {}).get("model_version")
                    if serving == wanted and health.get("status") == "ok":
                        break
                    if time.monotonic() - t0 > 60:
                        raise SystemExit(f"no swap to v{wanted} within 60 s: {health}")
                    time.sleep(0.05)
                swap_s.append(time.monotonic() - t0)
        done.set()
        load.join()
        failed = [a for a in answers if a[0] != 200]
        mixed = []
        for _, body, _, q in answers:
            if body is None:
                continue
            scores = [r["score"] for r in body["results"]]
            nearest = min(expected, key=lambda pair: max(
                abs(a - b) for a, b in zip(scores, expected[pair][q], strict=True)))
            named = (body["model_version"], body["index_version"],
                     body.get("ranker", {}).get("fusion", {}).get("weight"))
            if nearest != named:
                mixed.append((nearest, named, q))
        pairs = {(b["model_version"], b["index_version"]) for _, b, _, _ in answers if b}
        print(f"\nswaps under load: 16 clients, {args.swaps} promotions and {args.swaps} "
              f"rollbacks: {len(answers)} requests, {len(failed)} failed, {len(mixed)} "
              f"mixed-version answers; pairs seen {sorted(pairs)}; promotion or rollback to "
              f"serving: median {statistics.median(swap_s):.1f} s, max {max(swap_s):.1f} s "
              f"(poll every 0.5 s, then the new pair is loaded beside the old)")
    finally:
        stop(server)

    if hybrid_share:
        print("\nwhere a hybrid search's time goes, one query at a time in this process "
              "(ms per query): " + ", ".join(f"{k} {v:.2f}" for k, v in hybrid_share.items()))
    print(f"\nbatching: 8 queries one by one {1000 * min(one_by_one):.1f} ms, as one batch "
          f"{1000 * min(batched):.1f} ms ({min(one_by_one) / min(batched):.2f}x), model "
          f"encode only ({precision})")
    out = REPO / "bench/out/load_test.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"levels": levels, "swap_requests": len(answers),
                               "swap_failed": len(failed), "swap_mixed": len(mixed),
                               "swap_seconds": swap_s, "batch_one_by_one_s": min(one_by_one),
                               "batch_of_8_s": min(batched), "hybrid_ms": hybrid_share},
                              indent=1))


def weight_of(retriever: Any) -> float | None:
    lexical = retriever.index.lexical
    return None if lexical is None else lexical.fusion.weight


def time_the_sides(retriever: Any, queries: list[str]) -> dict[str, float]:
    """A hybrid ranker's search, step by step, one query at a time: encoding the query,
    the dense index's top depth, BM25's top depth, and the fusion (empty if dense)."""
    from embedloop.models.encoding import encode

    lexical = retriever.index.lexical
    if lexical is None:
        return {}
    depth, spent = lexical.fusion.depth, dict.fromkeys(("encode", "dense", "bm25", "fuse"), 0.0)
    for q in queries:
        t0 = time.perf_counter()
        vector = encode(retriever.model, [q], role="query", precision=retriever.index.precision)
        t1 = time.perf_counter()
        dense = retriever.index.search(vector, depth)
        t2 = time.perf_counter()
        sparse = lexical.sparse.search([q], depth)
        t3 = time.perf_counter()
        lexical.fuse(dense, sparse, 10)
        t4 = time.perf_counter()
        for step, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[step] += took
    spent = {k: 1000 * v / len(queries) for k, v in spent.items()}
    total = sum(spent.values())
    return {**spent, "BM25 + fusion share": 100 * (spent["bm25"] + spent["fuse"]) / total}


def serve(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen[bytes], str]:
    """`embedloop api` over the home, as its own process; returns it and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EMBEDLOOP_API_POLL_S": "0.5", "EMBEDLOOP_API_MAX_BATCH": str(max_batch)}
    env.pop("EMBEDLOOP_API_TOKEN", None)
    server = subprocess.Popen([str(BIN / "embedloop"), "api", "--config", str(args.config),
                               "--home", str(args.home), "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while get(f"{base}/healthz")[0] != 200:
        if server.poll() is not None or time.monotonic() - started > 300:
            raise SystemExit("the service did not start")
        time.sleep(0.5)
    return server, base


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=30)


def _until(done: threading.Event, base: str, queries: list[str], clients: int
           ) -> list[tuple[int, dict[str, Any] | None, float, str]]:
    """run_clients until `done` is set."""
    out: list[tuple[int, dict[str, Any] | None, float, str]] = []
    while not done.is_set():
        out += run_clients(base, queries, clients, 2.0)
    return out


if __name__ == "__main__":
    main()
