"""BM25, dense and hybrid retrieval side by side on a BEIR set's test queries.

Each side ranks the whole corpus once (the dense rankings are cached under --out, so a
second run only re-fuses); fusion is then scored for every weight on a grid, convex and
RRF. The hybrid row is the day-0 setting (--weight); the grid shows how much a weight
learned per deployment could add. "vs best single" is hybrid minus the better of BM25
and dense, per query, with a paired bootstrap 95% interval.

    .venv/bin/python bench/hybrid.py --beir ../shared/benchmarks/scifact \
        --out bench/out/hybrid-scifact
    .venv/bin/python bench/hybrid.py --beir ../shared/benchmarks/cmrc2018 \
        --base-model multilingual-e5-small --out bench/out/hybrid-cmrc --cjk bigrams jieba
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import index_texts, read_jsonl, read_qrels  # noqa: E402

DEPTH = 100
GRID = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]


def dense_rankings(base_model: str, texts: dict[str, str], queries: dict[str, str],
                   cache: Path) -> dict[str, list[tuple[str, float]]]:
    if cache.exists():
        return {q: [tuple(h) for h in hits] for q, hits in json.loads(cache.read_text()).items()}
    from embedloop.config import default_base_model
    from embedloop.models.base_models import resolve_base_model
    from embedloop.models.encoding import load_model, pick_device, resolve_precision

    path = resolve_base_model(base_model) if base_model else default_base_model()
    device = pick_device()
    model = load_model(path, device)
    retriever = index_texts(model, texts, resolve_precision("auto", device))
    ids = sorted(queries)
    hits = retriever.search([queries[q] for q in ids], DEPTH)
    out = {q: [(h.doc_id, h.score) for h in row] for q, row in zip(ids, hits, strict=True)}
    cache.write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--base-model", default="", help="default: all-MiniLM-L6-v2")
    parser.add_argument("--language", default="english", help="the analyser's stemmer")
    parser.add_argument("--cjk", nargs="+", default=["bigrams"], choices=["bigrams", "jieba"])
    parser.add_argument("--weight", type=float, default=0.5, help="day-0 dense share")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from embedloop.judge.evaluation import evaluate_rankings
    from embedloop.judge.significance import bootstrap_ci
    from embedloop.search.fusion import Fusion
    from embedloop.search.sparse import Analyzer, SparseIndex

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = read_jsonl(args.beir / "corpus.jsonl")
    texts = {d["_id"]: f"{d.get('title', '')} {d.get('text', '')}".strip() for d in corpus}
    qrels = read_qrels(args.beir / "qrels" / f"{args.split}.tsv")
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")
               if q["_id"] in qrels}
    qrels = {q: rel for q, rel in qrels.items() if q in queries}
    ids = sorted(queries)

    started = time.perf_counter()
    dense = dense_rankings(args.base_model, texts, queries, args.out / "dense.json")
    print(f"dense rankings: {time.perf_counter() - started:.0f} s "
          f"({len(texts)} documents, {len(ids)} queries)")

    def ndcg(rankings: dict[str, list[tuple[str, float]]]) -> np.ndarray:
        report = evaluate_rankings({q: [d for d, _ in r] for q, r in rankings.items()}, qrels)
        return report.per_query["ndcg@10"].to_numpy()

    results: dict[str, Any] = {"beir": str(args.beir), "split": args.split,
                               "queries": len(ids), "documents": len(texts),
                               "base_model": args.base_model or "all-MiniLM-L6-v2"}
    dense_scores = ndcg(dense)
    for cjk in args.cjk:
        analyzer = Analyzer(language=args.language, cjk=cjk)
        started = time.perf_counter()
        sparse_index = SparseIndex.build(list(texts.values()), list(texts), analyzer)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        sparse = dict(zip(ids, sparse_index.search([queries[q] for q in ids], DEPTH),
                          strict=True))
        per_query_ms = 1000 * (time.perf_counter() - started) / len(ids)
        bm25_scores = ndcg(sparse)
        best_single = np.maximum(bm25_scores.mean(), dense_scores.mean())
        single = bm25_scores if bm25_scores.mean() >= dense_scores.mean() else dense_scores
        grid = {}
        for method in ("convex", "rrf"):
            for weight in GRID:
                fusion = Fusion(weight=weight, method=method, depth=DEPTH)
                started = time.perf_counter()
                fused = {q: fusion.fuse(dense[q], sparse[q], DEPTH) for q in ids}
                fuse_ms = 1000 * (time.perf_counter() - started) / len(ids)
                grid[f"{method}:{weight}"] = (float(ndcg(fused).mean()), fuse_ms)
        day0 = Fusion(weight=args.weight)
        hybrid_scores = ndcg({q: day0.fuse(dense[q], sparse[q], DEPTH) for q in ids})
        low, high = bootstrap_ci(hybrid_scores - single)
        row = {"bm25": float(bm25_scores.mean()), "dense": float(dense_scores.mean()),
               "hybrid": float(hybrid_scores.mean()), "day0_weight": args.weight,
               "vs_best_single": float(hybrid_scores.mean() - best_single),
               "vs_best_single_ci95": [low, high], "bm25_build_s": build_s,
               "bm25_ms_per_query": per_query_ms,
               "grid": {k: v[0] for k, v in grid.items()},
               "fuse_ms_per_query": float(np.mean([v[1] for v in grid.values()]))}
        results[f"cjk={cjk}"] = row
        print(f"\n## {args.beir.name} ({args.split}: {len(ids)} queries), analyser "
              f"{args.language} / CJK {cjk}\n")
        print("| ranker | NDCG@10 |\n|---|---|")
        print(f"| BM25 | {row['bm25']:.4f} |\n| dense ({results['base_model']}) | "
              f"{row['dense']:.4f} |")
        print(f"| hybrid, convex w={args.weight} | {row['hybrid']:.4f} |")
        print(f"\nhybrid vs best single: {row['vs_best_single']:+.4f} "
              f"(95% CI [{low:+.4f}, {high:+.4f}])")
        print(f"BM25: index {build_s:.1f} s, {per_query_ms:.2f} ms/query; fusion "
              f"{row['fuse_ms_per_query']:.3f} ms/query")
        print("\n| weight | " + " | ".join(str(w) for w in GRID) + " |")
        print("|---|" + "---|" * len(GRID))
        for method in ("convex", "rrf"):
            print(f"| {method} | " + " | ".join(f"{grid[f'{method}:{w}'][0]:.4f}"
                                              for w in GRID) + " |")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
