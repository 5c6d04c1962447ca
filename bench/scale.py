"""Index backends at scale: build, save, swap, load, search latency and peak memory for
FAISS files and Milvus (Lite, embedded), at 100k and 1M documents.

Only the index is measured, so the vectors are synthetic: unit vectors of MiniLM's 384
dimensions, clustered like real embeddings (a random mixture of 1,000 directions), not
uniform noise, on which HNSW would be unusually hard. Each (backend, size) runs in its
own process, so its peak RSS is its own. Encoding time at these sizes is throughput
(bench/stages.py) times size: it is linear.

    .venv/bin/python bench/scale.py --sizes 100000 1000000 --out bench/out/scale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384


def clustered_unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices: 1M x 384 float32 is 1.5 GB already
        stop = min(n, start + 100_000)
        picks = rng.integers(0, len(centres), stop - start)
        block = centres[picks] + 0.6 * rng.normal(size=(stop - start, DIM)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def measure(backend: str, n: int, work: Path) -> dict[str, Any]:
    """One backend at one size, in this process."""
    from embedloop.index.faiss_index import FaissIndexStore

    vectors = clustered_unit_vectors(n)
    ids = [f"doc-{i}" for i in range(n)]
    queries = clustered_unit_vectors(1000, seed=1)
    if backend == "faiss":
        store: Any = FaissIndexStore(work / "indexes")
    else:
        from embedloop.index.milvus_index import MilvusIndexStore

        store = MilvusIndexStore(str(work / "milvus.db"), "scale")
    row: dict[str, Any] = {"backend": backend, "docs": n}

    started = time.perf_counter()
    built = store.build(vectors, ids, precision="fp32")
    row["build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    first = store.save_version(built, model_name="m", model_version="1",
                               corpus_fingerprint="c").version
    row["save_s"] = time.perf_counter() - started
    store.set_live(first)
    second = store.save_version(built, model_name="m", model_version="2",
                                corpus_fingerprint="c").version
    swaps = []
    for version in (second, first) * 5:
        started = time.perf_counter()
        store.set_live(version)
        swaps.append(time.perf_counter() - started)
    row["swap_ms"] = float(np.median(swaps) * 1000)
    started = time.perf_counter()
    live = store.load()
    row["load_s"] = time.perf_counter() - started
    row["kind"] = live.kind
    live.search(queries[:10], 10)  # warm
    latencies = []
    for q in queries[10:]:
        started = time.perf_counter()
        live.search(q[None, :], 10)
        latencies.append(time.perf_counter() - started)
    row.update(percentiles(latencies))
    exact = np.argsort(-(queries[10:110] @ vectors.T), axis=1)[:, :10]
    found = live.search(queries[10:110], 10)
    row["recall@10"] = float(np.mean([len({int(d[4:]) for d, _ in hits} & set(e)) / 10
                                      for hits, e in zip(found, exact, strict=True)]))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--backends", nargs="+", default=["faiss", "milvus"])
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale"))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # backend size: a child
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(measure(args.one[0], int(args.one[1]), Path(work))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        for backend in args.backends:
            child = subprocess.run([sys.executable, __file__, "--one", backend, str(n)],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                print(f"{backend} {n}: failed\n{child.stderr[-2000:]}", flush=True)
                continue
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| backend | docs | index | build s | save s | swap ms | load s | search p50 ms "
          "| p99 ms | recall@10 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['docs']:,} | {r['kind']} | {r['build_s']:.1f} | "
              f"{r['save_s']:.1f} | {r['swap_ms']:.1f} | {r['load_s']:.1f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall@10']:.3f} | "
              f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
