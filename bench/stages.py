"""The speed of every model-side stage on one machine, in one run (ratios compare within it).

1. One SciFact-size retrain through the real flow (bootstrap + one cycle on simulated
   train-split logs): wall time per stage, and the orchestration overhead, i.e. wall
   time minus fine-tuning and corpus encoding, as a share of the total.
2. Corpus encoding: embedloop's encode path against a bare `model.encode` loop, same
   model, texts, batch size and precision.
3. Training throughput: pairs/s from the flow's fine-tuning stage.
4. Search: p50/p99 latency of one query through `Searcher` (what `embedloop search`
   runs after loading: encode the query, search FAISS) over the SciFact test queries.
5. Index build and search time as the corpus grows (5k -> 100k vectors; the vectors
   are the SciFact ones, repeated with noise, so they are spread like real ones).

    .venv/bin/python bench/stages.py --out bench/out/stages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

for key, value in {"HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import REPO, read_jsonl, read_qrels, simulate  # noqa: E402


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/stages")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--encode-docs", type=int, default=1000)
    args = ap.parse_args()
    args.out, args.beir = args.out.resolve(), args.beir.resolve()

    from prefect.testing.utilities import prefect_test_harness

    from embedloop.config import load_settings
    from embedloop.flows.retrain import retrain
    from embedloop.index.faiss_index import build_faiss_index, choose_index
    from embedloop.ingest.corpus import document_texts, load_corpus
    from embedloop.models.encoding import (
        autocast,
        encode,
        load_model,
        pick_device,
        resolve_precision,
    )
    from embedloop.production.champion import Production

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    simulate(args.beir, args.out / "logs", "--batches", "1", "--seed", "0")
    home = args.out / "home"
    home.mkdir()
    config = home / "embedloop.toml"
    config.write_text((REPO / "bench/protocol.toml").read_text().replace(
        "[embedloop]\n", f'[embedloop]\nhome = "{home}"\nlogs = "{args.out / "logs"}"\n'
        f'corpus = "{args.beir / "corpus.jsonl"}"\nencode_precision = "{args.precision}"\n', 1)
        .replace("epochs = 2", "epochs = 1")
        + f'precision = "{args.precision}"\n')
    device = pick_device()
    precision = resolve_precision(args.precision, device)
    print(f"device {device}, precision {precision}, torch threads "
          f"{__import__('torch').get_num_threads()}", flush=True)

    # 1. one full retrain
    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        summary = retrain(reason="stage benchmark", config_file=str(config))
        wall = time.perf_counter() - started
    stages = summary["stage_seconds"]
    model_work = sum(stages.get(name, 0) for name in ("champion", "fine-tune",
                                                      "index candidate", "evaluate"))
    print(f"\n1. retrain on SciFact ({summary['rows_ingested']} log rows, {summary['pairs']} "
          f"pairs, 5183 docs): {wall:.1f} s wall, outcome {summary['outcome']}")
    for name, seconds in stages.items():
        print(f"   {name:<10} {seconds:8.1f} s  {seconds / wall:6.1%}")
    print(f"   orchestration and bookkeeping (wall - champion - fine-tune - index candidate "
          f"- evaluate): {wall - model_work:.1f} s = {(wall - model_work) / wall:.1%} of the run")
    print("   (champion is the bootstrap's corpus encoding plus its registry and index writes; "
          "so the share is an upper bound)")

    # 2. encoding: embedloop's path vs a bare loop
    settings = load_settings(config)
    corpus = load_corpus(args.beir / "corpus.jsonl")
    texts = document_texts(corpus)[: args.encode_docs]
    model = load_model(settings.resolved_base_model, device, settings.max_seq_length)
    batch = settings.encode_batch_size
    encode(model, texts[:64], role="document", batch_size=batch, precision=precision)  # warm-up
    timings: dict[str, list[float]] = {"embedloop": [], "bare": []}
    import torch

    for _ in range(2):  # interleaved, so drift hits both alike
        started = time.perf_counter()
        encode(model, texts, role="document", batch_size=batch, precision=precision)
        timings["embedloop"].append(time.perf_counter() - started)
        started = time.perf_counter()
        with torch.inference_mode(), autocast(precision, device):
            model.encode(texts, batch_size=batch, normalize_embeddings=True)
        timings["bare"].append(time.perf_counter() - started)
    ours, bare = min(timings["embedloop"]), min(timings["bare"])
    print(f"\n2. encoding {len(texts)} docs ({precision}, batch {batch}, best of 2): "
          f"embedloop {len(texts) / ours:.1f} docs/s, bare model.encode "
          f"{len(texts) / bare:.1f} docs/s, ratio {bare / ours:.3f}")

    # 3. training throughput (from the flow's own run)
    train_s = stages.get("fine-tune", 0.0)
    print(f"\n3. fine-tuning: {summary['pairs']} pairs x 1 epoch in {train_s:.1f} s = "
          f"{summary['pairs'] / train_s:.2f} pairs/s (stage wall time, model load and save "
          f"included)")

    # 4. search latency through the champion's Retriever (what `embedloop search` uses)
    searcher = Production.from_settings(settings).retriever(
        max_seq_length=settings.max_seq_length)
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    texts_q = [queries[q] for q in sorted(test) if q in queries]
    searcher.search(texts_q[:1], 10)
    latencies = []
    for text in texts_q:
        started = time.perf_counter()
        searcher.search([text], 10)
        latencies.append(time.perf_counter() - started)
    print(f"\n4. search, {len(latencies)} queries one at a time, k=10, index "
          f"{searcher.index.kind}: p50 {percentile_ms(latencies, 50):.1f} ms, "
          f"p99 {percentile_ms(latencies, 99):.1f} ms, max {max(latencies) * 1000:.1f} ms")

    # 5. index build and search vs corpus size
    vectors = searcher.index.index.reconstruct_n(0, searcher.index.index.ntotal)
    rng = np.random.default_rng(0)
    query_vectors = encode(model, texts_q[:100], role="query", precision=precision)
    print("\n5. index vs corpus size (SciFact vectors repeated with noise):")
    for n in (5_000, 20_000, 100_000):
        reps = -(-n // len(vectors))
        grown = np.tile(vectors, (reps, 1))[:n] + rng.normal(0, 0.02, (n, vectors.shape[1]))
        grown = (grown / np.linalg.norm(grown, axis=1, keepdims=True)).astype(np.float32)
        spec = choose_index(n)
        started = time.perf_counter()
        index = build_faiss_index(grown, spec)
        build = time.perf_counter() - started
        per_query = []
        for q in query_vectors:
            started = time.perf_counter()
            index.search(q[None, :], 10)
            per_query.append(time.perf_counter() - started)
        print(f"   {n:>7,} docs  {spec.kind:<8} build {build:6.2f} s   search p50 "
              f"{percentile_ms(per_query, 50):.2f} ms  p99 {percentile_ms(per_query, 99):.2f} ms;"
              f"  encoding them at the rate above: {n / (len(texts) / ours) / 60:.0f} min")
    (args.out / "results.json").write_text(json.dumps({
        "wall_s": wall, "stages": stages, "encode_docs_per_s": len(texts) / ours,
        "bare_docs_per_s": len(texts) / bare, "search_ms": latencies}, indent=1))


if __name__ == "__main__":
    main()
