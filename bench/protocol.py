"""The benchmark protocol of ../shared/benchmarks/README.md, end to end.

1. Simulate train-split interaction logs (seed 0, N batches) and a noise-only batch.
2. Start from the stock model; run the retrain flow once per batch as a nightly
   deployment would (each run sees only the logs that have arrived so far).
3. After each run score the champion on the TEST qrels (never trained on):
   NDCG@10, MRR@10, Recall@100. The base model is scored from its own index (v0001).
4. Feed the noise-only batch: it must not be promoted.
5. The ceiling: a bare sentence-transformers MNRL fine-tune on the clean train qrels.

Prints a markdown table (paste it into BENCHMARKS.md with the command) and writes
results.json under --out. Any BEIR-layout folder works (--beir), any language.

    .venv/bin/python bench/protocol.py --beir ../shared/benchmarks/scifact --out bench/out/scifact
    # the multilingual base (embedloop[multilingual]) on the Chinese set
    .venv/bin/python bench/protocol.py --beir ../shared/benchmarks/cmrc2018 \
        --config bench/protocol-multilingual.toml --out bench/out/cmrc2018-e5 --no-ceiling
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

for key, value in {"HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
                   # a busy 2-core machine starts Prefect's local server slower than 20 s
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(key, value)

REPO = Path(__file__).resolve().parents[1]
SIMULATOR = REPO.parent / "shared" / "benchmarks" / "simulate_clicks.py"
TEST_METRICS = ("ndcg@10", "mrr@10", "recall@100")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def simulate(beir: Path, out: Path, *extra: str) -> dict[str, Any]:
    subprocess.run([sys.executable, str(SIMULATOR), "--beir", str(beir), "--split", "train",
                    "--out", str(out), *extra], check=True)
    return json.loads((out / "manifest.json").read_text())


def index_texts(model: Any, texts: dict[str, str], precision: str,
                batch_size: int = 64) -> Any:
    """A Retriever: `model` searching an in-memory index of `texts` ({doc_id: text})."""
    from embedloop.index.faiss_index import FaissIndex
    from embedloop.models.encoding import encode
    from embedloop.search.retrieval import Retriever

    vectors = encode(model, list(texts.values()), role="document", batch_size=batch_size,
                     precision=precision, show_progress=True)
    return Retriever(model, FaissIndex.build(vectors, list(texts), precision), batch_size)


def score_index(retriever: Any, queries: dict[str, str],
                qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """TEST_METRICS of `retriever` on the judged queries; `queries`: id -> text."""
    from embedloop.search.retrieval import evaluate_retrieval

    means = evaluate_retrieval(retriever, qrels, texts=queries).means
    return {m: means[m] for m in TEST_METRICS}


def score_version(settings: Any, version: str, queries: dict[str, str],
                  qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """The test score of a registered version, through the index it built."""
    from embedloop.production.champion import Production

    retriever = Production.from_settings(settings).retriever(
        version, max_seq_length=settings.max_seq_length)
    return score_index(retriever, queries, qrels)


def ceiling(beir: Path, queries: dict[str, str], test: dict[str, dict[str, int]],
            work: Path, epochs: float, base_model: str) -> dict[str, Any]:
    """A bare sentence-transformers fine-tune on the clean train qrels, no pipeline."""
    import pandas as pd

    from embedloop.config import TrainingConfig
    from embedloop.learn.training import fine_tune
    from embedloop.models.encoding import pick_device, resolve_precision

    corpus = read_jsonl(beir / "corpus.jsonl")
    texts = {d["_id"]: f"{d.get('title', '')} {d.get('text', '')}".strip() for d in corpus}
    train = read_qrels(beir / "qrels" / "train.tsv")
    pairs = pd.DataFrame([{"anchor": queries[q], "positive": texts[d]}
                          for q, docs in sorted(train.items()) if q in queries
                          for d in sorted(docs) if d in texts])
    device = pick_device()
    started = time.perf_counter()
    result = fine_tune(base_model, pairs, work, TrainingConfig(epochs=epochs),
                       device=device)
    train_s = time.perf_counter() - started
    precision = resolve_precision("auto", device)
    started = time.perf_counter()
    retriever = index_texts(result.model, texts, precision)
    encode_s = time.perf_counter() - started
    scores = score_index(retriever, queries, test)
    return {"pairs": len(pairs), "epochs": epochs, "train_s": train_s, "encode_s": encode_s,
            **scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/scifact")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling-epochs", type=float, default=3.0)
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--cycles", type=int, default=0,
                    help="stop after this many retrains (0: every batch and the noise batch);"
                         " `--cycles 1` checks that a change left the base row and the first"
                         " cycle as they were")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml",
                    help="the pipeline's settings (default: bench/protocol.toml)")
    ap.add_argument("--train-side", choices=["query", "full"],
                    help="what each cycle trains (default: train_side of the settings)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting over the config's, e.g. --set mixing_weights= (the "
                         "fine-tune unmixed) --set negative_max_similarity=1 (no filter) --set "
                         "training.query_learning_rate=3e-5")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    # Its own Prefect database: a run beside the bench (a demo, tests) must not share one.
    os.environ.setdefault("PREFECT_HOME", str((args.out / "prefect").resolve()))
    (args.out / "prefect").mkdir(parents=True, exist_ok=True)

    from embedloop.config import load_settings
    from embedloop.flows.retrain import retrain

    home, arrived = args.out / "home", args.out / "arrived"
    arrived.mkdir(parents=True)
    manifest = simulate(args.beir, args.out / "logs", "--batches", str(args.batches),
                        "--seed", str(args.seed))
    # A broken tracker, one week after the last batch; its own seed keeps event ids apart.
    noise = simulate(args.beir, args.out / "noise", "--batches", "1", "--noise-only",
                     "--seed", str(args.seed + 1000), "--start", "2026-06-01")
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    chosen = dict(item.split("=", 1) for item in args.set)
    overrides: dict[str, Any] = {
        "home": str(home), "logs": str(arrived), "corpus": str(args.beir / "corpus.jsonl"),
        **({"train_side": args.train_side} if args.train_side else {}),
        **{k: v for k, v in chosen.items() if not k.startswith("training.")},
        "training": {k.removeprefix("training."): v for k, v in chosen.items()
                     if k.startswith("training.")}}
    settings = load_settings(args.config, **overrides)

    cycles: list[dict[str, Any]] = []
    feeds = [(b["file"], args.out / "logs" / b["file"]) for b in manifest["batches"]]
    feeds.append(("noise-only", args.out / "noise" / noise["batches"][0]["file"]))
    feeds = feeds[:args.cycles] if args.cycles > 0 else feeds
    for name, path in feeds:
        shutil.copy(path, arrived / f"{len(cycles) + 1:03d}-{path.name}")
        started = time.perf_counter()
        try:
            summary = retrain(reason=f"benchmark: {name}", trigger="schedule",
                              config_file=str(args.config),
                              overrides=overrides)
        except Exception as exc:  # a rejected batch is a result, not a crash of the bench
            print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
            summary = {"outcome": "rejected", "decision_reason": str(exc), "stage_seconds": {}}
        wall = time.perf_counter() - started
        if not cycles:
            cycles.append({"batch": "base model", "champion": "1",
                           **score_version(settings, "1", queries, test)})
            print(json.dumps(cycles[0]), flush=True)
        champion = summary.get("champion_version") or cycles[-1]["champion"]
        row = {"batch": name, "outcome": summary["outcome"], "champion": champion,
               "why": summary["decision_reason"], "wall_s": wall,
               "stages_s": summary["stage_seconds"], "pairs": summary.get("pairs", 0),
               "candidate_version": summary.get("candidate_version"),
               "pool": {"queries": summary.get("eval_queries", 0),
                        "new": summary.get("pool_new", 0),
                        "candidate": summary.get("candidate", {}),
                        "incumbent": summary.get("incumbent", {})},
               "gate": summary.get("gate", {}),
               **score_version(settings, champion, queries, test)}
        cycles.append(row)
        print(json.dumps(row), flush=True)

    results: dict[str, Any] = {"beir": str(args.beir), "config": args.config.read_text(),
                               "set": args.set,
                               "cycles": cycles}
    if not args.no_ceiling:
        results["ceiling"] = ceiling(args.beir, queries, test, args.out / "ceiling",
                                     args.ceiling_epochs, settings.resolved_base_model)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    print("\n| after | decision | champion | NDCG@10 | MRR@10 | Recall@100 | wall s |")
    print("|---|---|---|---|---|---|---|")
    for c in cycles:
        print(f"| {c['batch']} | {c.get('outcome', '-')} | v{c['champion']} | "
              f"{c['ndcg@10']:.4f} | {c['mrr@10']:.4f} | {c['recall@100']:.4f} | "
              f"{c.get('wall_s', 0):.0f} |")
    if "ceiling" in results:
        c = results["ceiling"]
        print(f"| ceiling: bare MNRL, clean qrels, {c['epochs']:g} epochs | - | - | "
              f"{c['ndcg@10']:.4f} | {c['mrr@10']:.4f} | {c['recall@100']:.4f} | "
              f"{c['train_s'] + c['encode_s']:.0f} |")
    print("\nstage seconds per cycle:")
    for c in cycles[1:]:
        print(f"  {c['batch']}: " + ", ".join(f"{k} {v:.0f}" for k, v in c["stages_s"].items()))


if __name__ == "__main__":
    main()
