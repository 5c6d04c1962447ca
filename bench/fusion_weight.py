"""A fusion weight learned from clicks against the day-0 weight, on held-out test queries.

1. The day-0 hybrid ranker (the base model, BM25, convex fusion at --weight) serves the
   train split's queries to ../shared/benchmarks/simulate_clicks.py (--ranker-url): the
   clicks are on what that ranker showed, as a deployment's own traffic is.
2. The clicks become graded labels with embedloop's click model (learn/pairs.py), each
   query scored over the documents it was shown (condensed), as the recipe's tune queries
   are.
3. From N of those queries (25, 50, 100, all; --draws random draws of each size) the
   weight is chosen by `learn/fusion.py:choose_fusion_weight`: credibly better than day 0
   (alpha 0.05, the default), and, to show why, plain best (alpha 1).
4. Each learned weight is scored on the test split's own qrels (whole rankings), against
   day 0 on the same queries.

    .venv/bin/python bench/fusion_weight.py --beir ../shared/benchmarks/scifact \
        --out bench/out/fusion-scifact
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid import DEPTH, dense_rankings  # noqa: E402
from protocol import SIMULATOR, read_jsonl, read_qrels  # noqa: E402

SIZES = (25, 50, 100, 0)  # 0: all


def serve(rank: dict[str, list[str]]) -> ThreadingHTTPServer:
    """GET /search?q=...&k=...: the day-0 ranker's list for a train query, by its text."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            args = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            k = int(args.get("k", ["10"])[0])
            body = json.dumps({"results": [{"doc_id": d} for d in
                                           rank[args["q"][0]][:k]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, required=True)
    parser.add_argument("--base-model", default="", help="default: all-MiniLM-L6-v2")
    parser.add_argument("--language", default="english")
    parser.add_argument("--cjk", default="bigrams", choices=["bigrams", "jieba"])
    parser.add_argument("--weight", type=float, default=0.5, help="the day-0 dense share")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--sessions-per-query", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from embedloop.config import Settings
    from embedloop.judge.evaluation import evaluate_rankings
    from embedloop.judge.significance import bootstrap_ci
    from embedloop.learn.fusion import choose_fusion_weight, fusion_scores
    from embedloop.learn.pairs import build_training_data, normalize_query
    from embedloop.search.fusion import Fusion
    from embedloop.search.retrieval import Sides
    from embedloop.search.sparse import Analyzer, SparseIndex

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = read_jsonl(args.beir / "corpus.jsonl")
    texts = {d["_id"]: f"{d.get('title', '')} {d.get('text', '')}".strip() for d in corpus}
    all_queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    qrels = {s: read_qrels(args.beir / "qrels" / f"{s}.tsv") for s in ("train", "test")}
    queries = {q: all_queries[q] for split in qrels.values() for q in split if q in all_queries}

    started = time.perf_counter()
    dense = dense_rankings(args.base_model, texts, queries, args.out / "dense.json")
    sparse_index = SparseIndex.build(list(texts.values()), list(texts),
                                     Analyzer(args.language, args.cjk))
    ids = sorted(queries)
    sparse = dict(zip(ids, sparse_index.search([queries[q] for q in ids], DEPTH), strict=True))
    print(f"both sides ranked: {time.perf_counter() - started:.0f} s ({len(texts)} documents, "
          f"{len(ids)} queries)")
    day0 = Fusion(weight=args.weight, depth=DEPTH)

    # 1. the day-0 ranker's traffic: clicks on what it showed
    by_text = {queries[q]: [d for d, _ in day0.fuse(dense[q], sparse[q], DEPTH)]
               for q in qrels["train"] if q in queries}
    logs = args.out / "logs"
    if not (logs / "manifest.json").exists():
        server = serve(by_text)
        try:
            subprocess.run([sys.executable, str(SIMULATOR), "--beir", str(args.beir),
                            "--split", "train", "--out", str(logs), "--batches", "1",
                            "--malformed-rate", "0", "--sessions-per-query",
                            str(args.sessions_per_query), "--ranker-url",
                            f"http://127.0.0.1:{server.server_port}/search"], check=True)
        finally:
            server.shutdown()
    rows = pd.concat([pd.read_json(f, lines=True, dtype={"doc_id": str})
                      for f in sorted(logs.glob("batch-*.jsonl"))], ignore_index=True)

    # 2. click labels, as the recipe's tune queries have them
    data = build_training_data(rows, texts, 1.0, graded_labels=True)
    click_qrels = data.eval_qrels
    shown = data.shown_for(click_qrels)
    id_of = {normalize_query(t): q for q, t in queries.items()}
    labelled = sorted(q for q in click_qrels if normalize_query(q) in id_of)
    grid = Settings().fusion_weights
    sides = Sides([dense[id_of[normalize_query(q)]] for q in labelled],
                  [sparse[id_of[normalize_query(q)]] for q in labelled])
    estimates = {  # what the recipe scores a weight with: over the shown documents (its
        # default, as the judge's harm screen), and over whole rankings for comparison
        "condensed": fusion_scores(sides, labelled, click_qrels, shown, day0, grid),
        "whole": fusion_scores(sides, labelled, click_qrels, {}, day0, grid)}
    print(f"click labels: {len(labelled)} train queries clicked "
          f"({len(rows)} rows, {int(rows['clicked'].sum())} clicks)")

    # 4. the test split's own labels: every weight, whole rankings
    test_ids = sorted(q for q in qrels["test"] if q in queries)

    def test_scores(weight: float) -> np.ndarray:
        fusion = Fusion(weight=weight, depth=DEPTH)
        rankings = {q: [d for d, _ in fusion.fuse(dense[q], sparse[q], DEPTH)] for q in test_ids}
        return evaluate_rankings(rankings, {q: qrels["test"][q] for q in test_ids}
                                 ).per_query["ndcg@10"].to_numpy()

    on_test = {w: test_scores(w) for w in grid}
    train_ids = sorted(q for q in qrels["train"] if q in queries)
    on_train = {w: evaluate_rankings(
        {q: [d for d, _ in Fusion(weight=w, depth=DEPTH).fuse(dense[q], sparse[q], DEPTH)]
         for q in train_ids}, {q: qrels["train"][q] for q in train_ids}
    ).per_query["ndcg@10"].to_numpy() for w in grid}
    best_test = max(on_test, key=lambda w: on_test[w].mean())
    results: dict[str, Any] = {
        "beir": str(args.beir), "day0_weight": args.weight, "test_queries": len(test_ids),
        "clicked_train_queries": len(labelled),
        "test_ndcg_by_weight": {str(w): float(v.mean()) for w, v in on_test.items()},
        "train_ndcg_by_weight": {str(w): float(v.mean()) for w, v in on_train.items()},
        "click_ndcg_by_weight": {name: {str(w): float(v.mean()) for w, v in e.items()}
                                 for name, e in estimates.items()},
        "rules": {}}
    print(f"\n## {args.beir.name}: test NDCG@10 by weight ({len(test_ids)} queries; day 0 "
          f"{args.weight:g}, best {best_test:g})\n")
    print("| weight | " + " | ".join(f"{w:g}" for w in grid) + " |")
    print("|---|" + "---|" * len(grid))
    print("| test qrels | " + " | ".join(f"{on_test[w].mean():.4f}" for w in grid) + " |")
    print(f"| train qrels ({len(train_ids)} queries, the truth clicks estimate) | "
          + " | ".join(f"{on_train[w].mean():.4f}" for w in grid) + " |")
    for name, per_query in estimates.items():
        print(f"| clicks, {name} ({len(labelled)} train queries) | "
              + " | ".join(f"{per_query[w].mean():.4f}" for w in grid) + " |")

    # 3. learned from N clicked queries, --draws times each
    rng = np.random.default_rng(0)
    rules = [(f"{name}, {rule}", per_query, alpha) for name, per_query in estimates.items()
             for rule, alpha in (("credible (alpha 0.05)", 0.05), ("plain best (alpha 1)", 1.0))]
    for rule, per_query, alpha in rules:
        print(f"\n### clicks scored {rule}\n")
        print("| pool queries | learned weights (draws) | test NDCG@10 learned | day 0 | "
              "learned − day 0 (95% CI) |\n|---|---|---|---|---|")
        rows_out = []
        for size in SIZES:
            n = len(labelled) if size == 0 or size >= len(labelled) else size
            draws = 1 if n == len(labelled) else args.draws
            weights = []
            for _ in range(draws):
                pick = np.sort(rng.choice(len(labelled), size=n, replace=False))
                chosen = choose_fusion_weight({w: v[pick] for w, v in per_query.items()},
                                              args.weight, alpha)
                weights.append(chosen.weight)
            learned = np.mean([on_test[w] for w in weights], axis=0)  # over draws, per query
            delta = learned - on_test[args.weight]
            low, high = bootstrap_ci(delta)
            counts = pd.Series(weights).value_counts().sort_index()
            spread = ", ".join(f"{w:g}×{c}" for w, c in counts.items())
            label = f"all {n}" if n == len(labelled) else str(n)
            print(f"| {label} | {spread} | {learned.mean():.4f} | "
                  f"{on_test[args.weight].mean():.4f} | {delta.mean() * 100:+.2f} "
                  f"[{low * 100:+.2f}, {high * 100:+.2f}] |")
            rows_out.append({"queries": n, "draws": draws, "weights": weights,
                             "test_ndcg_learned": float(learned.mean()),
                             "test_ndcg_day0": float(on_test[args.weight].mean()),
                             "delta": float(delta.mean()), "delta_ci95": [low, high]})
        results["rules"][rule] = rows_out
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
