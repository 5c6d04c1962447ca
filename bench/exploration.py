"""Does a little exploration in the served lists improve the offline screen's decisions,
and what does it cost users? (issue 24, part 7)

On a closed-loop home (the champion, a candidate, their rankings), users are simulated on
the evaluation pool's queries exactly as the closed loop does (the shared simulator's
position-biased clicks on the champion's top 10, 4 sessions a query a day), and in a
share of sessions the list is explored:

- `randpair`: one random adjacent pair of the top 10 swapped (RandPair, Radlinski and
  Joachims 2006): every position is sometimes shown one lower, so the click model sees
  each document at two positions;
- `insert`: one document from the champion's ranks 11-20 shown at a random position of
  the top 10: documents beyond the top 10 get labels.

From those logs the pool's labels and shown sets are built as a retrain builds them
(pairs.build_training_data), and the screen's numbers are computed for the real
candidate and for a harmful one (the champion's own list with its first two results
swapped for half the queries): the gain over the shown documents (condensed lists), the
whole-ranking gain, and whether the screen calls harm. The truth is the judged qrels of
the same queries. The cost: the NDCG@10 users lose in an explored session, on average.

    .venv/bin/python -u bench/exploration.py --home /tmp/cl-base/home --champion 1 \\
        --candidate 2 --days 2 --seeds 20
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from canary import simulator  # noqa: E402
from protocol import REPO, read_jsonl, read_qrels  # noqa: E402


def explore(top: list[str], beyond: list[str], how: str, rng: random.Random) -> list[str]:
    shown = list(top)
    if how == "randpair":
        k = rng.randrange(len(shown) - 1)
        shown[k], shown[k + 1] = shown[k + 1], shown[k]
    elif how == "insert" and beyond:
        shown.insert(rng.randrange(len(shown)), rng.choice(beyond))
        shown = shown[: len(top)]
    return shown


def harmful(ranking: list[str], query: str) -> list[str]:
    """For half the queries (by a hash of the id), the champion's first two results
    swapped: a candidate a few NDCG points worse."""
    out = list(ranking)
    if hash_half(query):
        out[0], out[1] = out[1], out[0]
    return out


def hash_half(query: str) -> bool:
    import zlib

    return zlib.crc32(query.encode()) % 2 == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--champion", default="1")
    ap.add_argument("--candidate", default="2")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.judge.evaluation import condensed, evaluate_rankings, ndcg_at_k
    from embedloop.judge.evidence import OfflineRule, Source, compare_offline
    from embedloop.learn.pairs import build_training_data, in_eval_pool, normalize_query
    from embedloop.production.champion import Production

    settings = load_settings(args.config, home=str(args.home.resolve()),
                             corpus=str((args.beir / "corpus.jsonl").resolve()))
    texts = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    truth = read_qrels(args.beir / "qrels" / "train.tsv")
    pool = sorted(q for q in truth if q in texts and in_eval_pool(
        normalize_query(texts[q]), settings.holdout_fraction))
    production = Production.from_settings(settings)
    ranked = {}
    for version in (args.champion, args.candidate):
        retriever = production.retriever(version, max_seq_length=settings.max_seq_length)
        ranked[version] = dict(zip(pool, retriever.rank([texts[q] for q in pool], 100),
                                   strict=True))
    ranked["harmful"] = {q: harmful(r, q) for q, r in ranked[args.champion].items()}
    clicks_for = simulator().clicks_for
    rule = OfflineRule(alpha=0.025)

    def by_text(rankings: dict[str, list[str]]) -> dict[str, list[str]]:
        return {texts[q].strip(): r for q, r in rankings.items()}

    true_gain = {name: statistics.mean(ndcg_at_k(ranked[name][q], truth[q], 10)
                                       - ndcg_at_k(ranked[args.champion][q], truth[q], 10)
                                       for q in pool)
                 for name in (args.candidate, "harmful")}
    print(f"{len(pool)} pool queries; true NDCG@10 gain over v{args.champion}: "
          + ", ".join(f"{k} {v:+.4f}" for k, v in true_gain.items()), flush=True)
    rows_out: list[dict[str, Any]] = []
    for how in ("none", "randpair", "insert"):
        results: dict[str, list[tuple[float, float, bool]]] = {args.candidate: [],
                                                               "harmful": []}
        cost = []
        for seed in range(args.seeds):
            rng = random.Random(seed)
            rows = []
            n = 0
            for day in range(args.days):
                for q in pool:
                    for s in range(4):
                        top = ranked[args.champion][q][:10]
                        shown = top
                        if how != "none" and rng.random() < args.share:
                            shown = explore(top, ranked[args.champion][q][10:20], how, rng)
                            cost.append(ndcg_at_k(top, truth[q], 10)
                                        - ndcg_at_k(shown, truth[q], 10))
                        session = f"s{seed}-{day}-{q}-{s}"
                        for p, (doc, clicked) in enumerate(zip(
                                shown, clicks_for(shown, truth[q], False, rng),
                                strict=True), start=1):
                            n += 1
                            rows.append({"event_id": f"e{n}", "ts": f"2026-03-0{day + 1}",
                                         "session_id": session, "query": texts[q],
                                         "doc_id": doc, "position": p, "clicked": clicked})
            data = build_training_data(pd.DataFrame(rows), {}, settings.holdout_fraction,
                                       min_relevance=settings.min_click_relevance)
            qrels, shown_sets = data.eval_qrels, data.shown_for(data.eval_qrels)
            base = evaluate_rankings(by_text(ranked[args.champion]), qrels)
            base_c = condensed(base, qrels, shown_sets)
            for name in results:
                cand = evaluate_rankings(by_text(ranked[name]), qrels)
                verdict = compare_offline(Source.POOL, (cand, base),
                                          (condensed(cand, qrels, shown_sets), base_c), rule)
                numbers = verdict.numbers
                results[name].append((numbers.condensed_delta, numbers.delta,
                                      verdict.finding.value == "harm"))
        for name, found in results.items():
            row = {"exploration": how, "candidate": name, "true_gain": true_gain[name],
                   "shown_gain_mean": statistics.mean(f[0] for f in found),
                   "shown_gain_sd": statistics.stdev(f[0] for f in found),
                   "whole_gain_mean": statistics.mean(f[1] for f in found),
                   "harm_called": sum(f[2] for f in found) / len(found),
                   "cost_per_explored_session": statistics.mean(cost) if cost else 0.0}
            rows_out.append(row)
            print(row, flush=True)
    print(f"\n{args.seeds} simulated histories of {args.days} days each; exploration in "
          f"{args.share:.0%} of sessions\n")
    print("| exploration | candidate | true gain | over shown documents: mean (sd) | whole "
          "ranking: mean | harm called | NDCG@10 lost per explored session |")
    print("|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['exploration']} | {r['candidate']} | {r['true_gain']:+.4f} | "
              f"{r['shown_gain_mean']:+.4f} ({r['shown_gain_sd']:.4f}) | "
              f"{r['whole_gain_mean']:+.4f} | {r['harm_called']:.0%} | "
              f"{r['cost_per_explored_session']:.4f} |")


if __name__ == "__main__":
    main()
