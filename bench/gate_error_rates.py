"""The promotion gate's error rates, measured where the truth is known.

After a protocol run (bench/protocol.py --out DIR) every registered version's true
quality is known from the judged test split, which the pipeline never sees. This bench

1. scores every version on the evaluation pool of the last click-trained cycle (labels
   from all its clicks through the click model, graded and binary) and on the test split;
2. trains a null candidate: the base model fine-tuned (1 epoch) on the noise-only batch
   alone, with the click-model filter off, so it really learns from noise;
3. A/A: histories of repeated looks at candidates with no real gain, each look judged by
   the real `should_promote` on a resampled, growing pool; a history is a false
   promotion if any of its looks promotes. Three kinds of null:
   - the noise-trained candidate, re-judged every night;
   - "sharp null": a real candidate's per-query deltas with random signs (mean gain
     exactly zero, the boundary of "no improvement", the hardest null), re-judged;
   - the same, with a new null candidate every night (fresh signs per look);
   beside each, the naive rule (alpha at every look) for comparison;
4. power: the share of resampled pools on which each real candidate is promoted at
   looks 1-3, with graded labels and (look 1) with binary ones, next to its true gain;
5. each protocol decision again, candidate against the champion it was judged against,
   on the same pool queries with click labels and with their true train-split qrels:
   how much evidence perfect labels would give (the limit of power at this pool size).

    .venv/bin/python -u bench/gate_error_rates.py --run bench/out/scifact
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import REPO, index_texts, read_jsonl, read_qrels  # noqa: E402

from embedloop.evaluation import EvalReport  # noqa: E402
from embedloop.promotion import PromotionPolicy, should_promote  # noqa: E402
from embedloop.significance import randomization_p_value  # noqa: E402


def resampled(report: EvalReport, picks: np.ndarray, values: np.ndarray | None = None,
              metric: str = "ndcg@10") -> EvalReport:
    """The queries at `picks` (with repeats, each made a distinct query), optionally with
    the primary metric replaced by `values`."""
    frame = report.per_query.iloc[picks].reset_index(drop=True).copy()
    frame["query"] = [f"{q}#{i}" for i, q in enumerate(frame["query"])]
    if values is not None:
        frame[metric] = values
    return EvalReport(frame)


def pool_sizes(n: int, looks: int) -> list[int]:
    """A pool that grows night by night, from about half of today's to all of it."""
    return [max(2, round(n * (looks + k) / (2 * looks))) for k in range(1, looks + 1)]


def history_promotes(cand: EvalReport, inc: EvalReport, policy: PromotionPolicy,
                     rng: np.random.Generator, looks: int, flip: str, naive: bool) -> bool:
    """One history of `looks` nights on a growing bootstrap pool; True if any look
    promotes. flip: "" (real deltas), "same" (one sign per query for the whole history),
    "fresh" (new signs each night: a new null candidate)."""
    n = inc.n_queries
    picks = rng.integers(0, n, size=n)
    base = inc.per_query["ndcg@10"].to_numpy()[picks]
    delta = cand.per_query["ndcg@10"].to_numpy()[picks] - base
    signs = rng.choice((-1.0, 1.0), size=n)
    for look, size in enumerate(pool_sizes(n, looks), start=1):
        if flip == "fresh":
            signs = rng.choice((-1.0, 1.0), size=n)
        d = delta * signs if flip else delta
        judged = should_promote(resampled(inc, picks[:size]),
                                resampled(inc, picks[:size], base[:size] + d[:size]),
                                policy, look=1 if naive else look)
        if judged.promote:
            return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "bench/out/scifact")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--histories", type=int, default=200)
    ap.add_argument("--looks", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=200)
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.corpus import document_texts, load_corpus
    from embedloop.encoding import load_model, pick_device, resolve_precision
    from embedloop.ledger import batch_dir, load_accepted_history, load_ledger
    from embedloop.pairs import build_training_data
    from embedloop.registry import Registry
    from embedloop.retrieval import evaluate_retrieval
    from embedloop.training import fine_tune

    settings = load_settings(args.config, home=str(args.run / "home"))
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    corpus = load_corpus(args.beir / "corpus.jsonl")
    texts = dict(zip(corpus["doc_id"], document_texts(corpus), strict=True))
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test_ids = read_qrels(args.beir / "qrels" / "test.tsv")
    test = {queries[q]: {d: float(g) for d, g in docs.items()} for q, docs in test_ids.items()}
    device = pick_device()
    precision = resolve_precision(settings.encode_precision, device)

    ledger = load_ledger(settings.state_dir)
    # The pool as the last click-trained cycle judged on: the noise-only batch (fed last)
    # is left out, since a broken tracker's clicks blur the click model's labels.
    clean = dataclasses.replace(ledger, batches=ledger.batches[:-1])
    history = load_accepted_history(settings.state_dir, clean)
    assert history is not None, f"{args.run} holds no committed batches"
    pools = {labels: build_training_data(history.iloc[:0], texts, settings.holdout_fraction,
                                         history=history,
                                         min_relevance=settings.min_click_relevance,
                                         graded_labels=labels == "graded").eval_qrels
             for labels in ("graded", "binary")}
    # the pool's queries are train-split queries: their judged qrels are the truth the
    # click labels estimate
    train_ids = read_qrels(args.beir / "qrels" / "train.tsv")
    train = {queries[q].strip(): {d: float(g) for d, g in docs.items()}
             for q, docs in train_ids.items()}
    pools["true"] = {q: train[q] for q in pools["graded"] if q in train}
    print(f"final pool: {len(pools['graded'])} queries ({len(pools['true'])} with train "
          f"qrels); test: {len(test)} queries", flush=True)

    models: dict[str, str] = {}
    for v in registry.client.search_model_versions(f"name='{settings.model_name}'"):
        models[f"v{v.version}"] = registry.local_model_path(str(v.version),
                                                            settings.state_dir / "models")
    noise_batch = ledger.batches[-1]  # the protocol feeds the noise-only batch last
    noise = pd.read_parquet(batch_dir(settings.state_dir, noise_batch) / "accepted.parquet")
    null_dir = args.run / "null-noise-alone"
    if not (null_dir / "model").exists():
        data = build_training_data(noise, texts, settings.holdout_fraction, min_relevance=0.0,
                                   graded_labels=False)
        print(f"null candidate: {len(data.pairs)} pairs from the noise-only batch alone, "
              f"click-model filter off", flush=True)
        fine_tune(models["v1"], data.pairs, null_dir,
                  dataclasses.replace(settings.training, epochs=1.0), device=device,
                  max_seq_length=settings.max_seq_length)
    models["noise-alone"] = str(null_dir / "model")

    scores: dict[str, dict[str, EvalReport]] = {}
    for name, path in sorted(models.items()):
        model = load_model(path, device, settings.max_seq_length)
        retriever = index_texts(model, texts, precision, settings.encode_batch_size)
        # keyed by query text: each query is its own text to encode
        scores[name] = {kind: evaluate_retrieval(retriever, qrels)
                        for kind, qrels in (("test", test), *pools.items())}
        print(f"{name}: " + ", ".join(f"{k} {r.primary:.4f}" for k, r in scores[name].items()),
              flush=True)

    base = scores["v1"]
    print("\n### Pool against truth (each version against the base v1, NDCG@10)\n")
    print("| version | protocol decision | test Δ | pool Δ graded (z) | pool Δ binary (z) |")
    print("|---|---|---|---|---|")
    decisions = {name: registry.version_info(name[1:]).tags.get("decision", "?")
                 for name in scores if name.startswith("v")}
    for name, s in scores.items():
        if name == "v1":
            continue
        cells = []
        for kind in ("graded", "binary"):
            d = (s[kind].per_query["ndcg@10"] - base[kind].per_query["ndcg@10"]).to_numpy()
            z = d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if d.std() > 0 else 0.0
            cells.append(f"{d.mean():+.4f} ({z:.2f})")
        print(f"| {name} | {decisions.get(name, 'trained by this bench')} | "
              f"{s['test'].primary - base['test'].primary:+.4f} | {' | '.join(cells)} |")

    print("\n### Each decision again: candidate against the champion it was judged against, "
          "on the final pool\n")
    print("| batch | decision | test Δ | pool Δ click labels (p) | pool Δ true qrels (p) |")
    print("|---|---|---|---|---|")
    cycles = json.loads((args.run / "results.json").read_text())["cycles"]
    for before, cycle in zip(cycles, cycles[1:], strict=False):
        cand, inc = f"v{cycle.get('candidate_version')}", f"v{before['champion']}"
        if cand not in scores or inc not in scores:
            continue
        cells = []
        for kind in ("graded", "true"):
            d = (scores[cand][kind].per_query["ndcg@10"]
                 - scores[inc][kind].per_query["ndcg@10"]).to_numpy()
            cells.append(f"{d.mean():+.4f} ({randomization_p_value(d):.3f})")
        print(f"| {cycle['batch']} ({cand} vs {inc}) | {cycle.get('outcome', '?')} | "
              f"{scores[cand]['test'].primary - scores[inc]['test'].primary:+.4f} | "
              f"{' | '.join(cells)} |", flush=True)

    policy = PromotionPolicy(primary_metric=settings.primary_metric,
                             min_improvement=settings.min_improvement,
                             min_eval_queries=settings.min_holdout_queries,
                             alpha=settings.significance_alpha)
    naive_policy = PromotionPolicy(primary_metric=settings.primary_metric,
                                   min_improvement=settings.min_improvement,
                                   min_eval_queries=settings.min_holdout_queries,
                                   alpha=min(1.0, 2 * settings.significance_alpha))  # look 1
    rng = np.random.default_rng(0)
    gains = {n: s["test"].primary - base["test"].primary for n, s in scores.items() if n != "v1"}
    strongest = max(gains, key=lambda n: gains[n])
    print(f"\n### A/A: {args.histories} histories of {args.looks} looks, pool growing to "
          f"{len(pools['graded'])} queries (alpha {policy.alpha})\n")
    print("| null | spending rule: false promotions | naive rule (alpha each look) |")
    print("|---|---|---|")
    nulls = [("noise-alone candidate (test Δ "
              f"{gains['noise-alone']:+.4f}) vs v1, re-judged", "noise-alone", ""),
             (f"sharp null from {strongest}'s deltas, same candidate re-judged", strongest,
              "same"),
             (f"sharp null from {strongest}'s deltas, a new candidate every night",
              strongest, "fresh")]
    aa: dict[str, Any] = {}
    for label, name, flip in nulls:
        cand, inc = scores[name]["graded"], base["graded"]
        rates = [sum(history_promotes(cand, inc, p, rng, args.looks, flip, naive)
                     for _ in range(args.histories)) / args.histories
                 for p, naive in ((policy, False), (naive_policy, True))]
        aa[label] = rates
        print(f"| {label} | {rates[0]:.3f} | {rates[1]:.3f} |", flush=True)

    print(f"\n### Power: share of {args.resamples} resampled pools promoted (against v1)\n")
    print("| candidate | test Δ | look 1 | look 2 | look 3 | look 1, binary labels |")
    print("|---|---|---|---|---|---|")
    power: dict[str, list[float]] = {}
    for name in sorted(gains, key=lambda n: -gains[n]):
        counts = np.zeros(4)
        n = base["graded"].n_queries
        for _ in range(args.resamples):
            picks = rng.integers(0, n, size=n)
            inc, cand = (resampled(base["graded"], picks),
                         resampled(scores[name]["graded"], picks))
            for i, look in enumerate((1, 2, 3)):
                counts[i] += should_promote(cand, inc, policy, look=look).promote
            nb = base["binary"].n_queries
            picks_b = rng.integers(0, nb, size=nb)
            counts[3] += should_promote(resampled(scores[name]["binary"], picks_b),
                                        resampled(base["binary"], picks_b), policy,
                                        look=1).promote
        power[name] = list(counts / args.resamples)
        print(f"| {name} | {gains[name]:+.4f} | "
              + " | ".join(f"{c:.2f}" for c in power[name]) + " |", flush=True)
    (args.run / "gate_error_rates.json").write_text(json.dumps(
        {"aa": aa, "power": power, "gains": gains}, indent=1))


if __name__ == "__main__":
    main()
