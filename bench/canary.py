"""Canaries by simulation: the sequential test on interleaved sessions of simulated users,
hundreds of times over, on rankings of real registered models.

Each version's top 10 for every query of a split (default: SciFact's test queries, which
no candidate trained on) is computed once through the version's own index. A simulated
canary then plays sessions one after another: a query drawn at random, the champion's
and the challenger's lists mixed by team-draft interleaving (interleaving.team_draft,
exactly as the service mixes them), clicks by the position-based user of
../shared/benchmarks/simulate_clicks.py (its `clicks_for`: examination 1/position,
0.9 on a judged relevant document, 0.06 on any other), the session's vote credited as a
retrain credits it, and the judge's sequential test read after EVERY session (a nightly
reading is less demanding than this). It ends when the challenger is credibly better
(promoted), credibly worse (stopped), or at the session limit.

Reported per comparison: how often it was promoted, with the Clopper-Pearson 95% upper
bound of that rate; sessions to a decision (median and 90th percentile); and the cost to
users: over the sessions served an interleaved list, the NDCG@10 lost against the
champion's own list (true judgements), summed.

    .venv/bin/python -u bench/canary.py --home /tmp/proto/home --champion 1 \\
        --pair 1:1 --pair 1:2 --pair 2:3 --canaries 200
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import REPO, SIMULATOR, read_jsonl, read_qrels  # noqa: E402


def simulator() -> Any:
    """The shared simulator's user model (its clicks_for), imported from ../shared."""
    spec = importlib.util.spec_from_file_location("simulate_clicks", SIMULATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def version_label(version: str) -> str:
    """`v3`, or `v3 of cl14b` for another home's version (HOME@VERSION)."""
    home, _, number = version.rpartition("@")
    return f"v{number} of {Path(home).parent.name if Path(home).name == 'home' else home}" \
        if home else f"v{number}"


def rankings(settings: Any, version: str, queries: dict[str, str], cache: Path,
             k: int = 10) -> dict[str, list[str]]:
    """Version's top k for each query id, through its own index (cached on disk).
    `version` may name another home as HOME@VERSION (every home starts from the same base
    model, so versions of two homes compare on the same queries)."""
    import dataclasses
    import hashlib

    home, _, number = version.rpartition("@")
    if home:
        settings = dataclasses.replace(settings, home=Path(home).resolve())
        version = number
    tag = hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]
    path = cache / f"{tag}-v{version}-top{k}.json"
    if path.exists():
        return json.loads(path.read_text())
    from embedloop.production.champion import Production

    retriever = Production.from_settings(settings).retriever(
        version, max_seq_length=settings.max_seq_length)
    ids = sorted(queries)
    ranked = dict(zip(ids, retriever.rank([queries[q] for q in ids], k), strict=True))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ranked))
    return ranked


def ndcg10(ranked: list[str], relevant: dict[str, int]) -> float:
    from embedloop.judge.evaluation import ndcg_at_k

    return ndcg_at_k(ranked, relevant, 10)


def clopper_pearson_upper(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial rate."""
    from scipy.stats import beta

    if successes >= trials:
        return 1.0
    return float(beta.ppf(confidence, successes + 1, trials - successes))


def run_canary(champion: dict[str, list[str]], challenger: dict[str, list[str]],
               truth: dict[str, dict[str, int]], clicks_for: Any, rng: random.Random,
               rule: Any, teams: tuple[str, str] = ("c", "x")) -> dict[str, Any]:
    """One canary: sessions until a decision or the limit."""
    from embedloop.judge.evidence import Finding, Source, read_interleaving
    from embedloop.judge.interleaving import team_draft

    queries = sorted(truth)
    wins = losses = 0
    cost = 0.0
    for session in range(1, rule.max_sessions + 1):
        q = rng.choice(queries)
        mixed = team_draft(champion[q], challenger[q], 10, rng, teams)
        shown = [d for d, _ in mixed]
        cost += ndcg10(champion[q], truth[q]) - ndcg10(shown, truth[q])
        clicked = clicks_for(shown, truth[q], False, rng)
        votes = [0, 0]
        for (_, team), c in zip(mixed, clicked, strict=True):
            if c and team is not None:
                votes[team == teams[1]] += 1
        if votes[0] == votes[1]:
            continue  # undecided: the evidence cannot move
        wins += votes[1] > votes[0]
        losses += votes[0] > votes[1]
        verdict = read_interleaving(Source.CANARY, session, wins, losses, rule)
        if verdict.finding in (Finding.SUPERIOR, Finding.HARM):
            return {"outcome": "promoted" if verdict.finding == Finding.SUPERIOR
                    else "stopped", "sessions": session, "wins": wins, "losses": losses,
                    "cost": cost}
    return {"outcome": "expired", "sessions": rule.max_sessions, "wins": wins,
            "losses": losses, "cost": cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--pair", action="append", required=True,
                    help="champion:challenger versions (repeatable); the same version twice "
                         "is an A/A comparison; HOME@VERSION names another home's version")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--split", default="test", help="whose queries the users ask")
    ap.add_argument("--subset", choices=("all", "pool", "trained"), default="all",
                    help="of the split's queries, only those in the evaluation pool (never "
                         "trained on), or only those outside it (the candidate's training "
                         "queries, on a train split): is memorising rewarded?")
    ap.add_argument("--canaries", type=int, default=200)
    ap.add_argument("--max-sessions", type=int, default=None,
                    help="default: the settings' canary_max_sessions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/canary")
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.judge.evidence import Source
    from embedloop.judge.policy import Policy

    settings = load_settings(args.config, home=str(args.home.resolve()),
                             corpus=str((args.beir / "corpus.jsonl").resolve()))
    rule = Policy.from_settings(settings).online_rule(Source.CANARY)
    if args.max_sessions:
        rule = type(rule)(rule.alpha, rule.harm_alpha, args.max_sessions)
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    truth = read_qrels(args.beir / "qrels" / f"{args.split}.tsv")
    truth = {q: rel for q, rel in truth.items() if q in queries}
    if args.subset != "all":
        from embedloop.learn.pairs import in_eval_pool, normalize_query

        inside = args.subset == "pool"
        truth = {q: rel for q, rel in truth.items() if in_eval_pool(
            normalize_query(queries[q]), settings.holdout_fraction) == inside}
    asked = {q: queries[q] for q in truth}
    clicks_for = simulator().clicks_for
    cache = args.out / "rankings" / f"{args.split}-{args.subset}"
    results = []
    for pair in args.pair:
        champion_v, challenger_v = pair.split(":")
        champion = rankings(settings, champion_v, asked, cache)
        challenger = rankings(settings, challenger_v, asked, cache)
        gain = statistics.mean(ndcg10(challenger[q], truth[q]) - ndcg10(champion[q], truth[q])
                               for q in truth)
        started = time.perf_counter()
        runs = [run_canary(champion, challenger, truth, clicks_for,
                           random.Random(args.seed * 100_003 + i), rule)
                for i in range(args.canaries)]
        promoted = sum(r["outcome"] == "promoted" for r in runs)
        stopped = sum(r["outcome"] == "stopped" for r in runs)
        decided = sorted(r["sessions"] for r in runs if r["outcome"] != "expired")
        row = {"champion": champion_v, "challenger": challenger_v, "test_gain": gain,
               "canaries": len(runs), "promoted": promoted, "stopped": stopped,
               "expired": len(runs) - promoted - stopped,
               "promoted_upper95": clopper_pearson_upper(promoted, len(runs)),
               "sessions_median": statistics.median(decided) if decided else None,
               "sessions_p90": decided[int(0.9 * (len(decided) - 1))] if decided else None,
               "sessions_all_median": statistics.median(r["sessions"] for r in runs),
               "cost_median": statistics.median(r["cost"] for r in runs),
               "seconds": time.perf_counter() - started, "alpha": rule.alpha,
               "harm_alpha": rule.harm_alpha, "max_sessions": rule.max_sessions}
        results.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.canaries} simulated canaries per row, users asking {len(truth)} "
          f"{args.split} queries ({args.subset}); promoted when the evidence reaches "
          f"log(1/{rule.alpha:g}), stopped at log(1/{rule.harm_alpha:g}) the other way, at "
          f"most {rule.max_sessions} sessions")
    print(f"\n| champion → challenger | {args.split} NDCG@10 gain (judged) | promoted "
          "(95% upper bound) | stopped | expired | sessions to a decision: median / p90 | "
          "user cost: sessions × NDCG lost, median |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        sessions = (f"{r['sessions_median']:.0f} / {r['sessions_p90']:.0f}"
                    if r["sessions_median"] is not None else "-")
        print(f"| {version_label(r['champion'])} → {version_label(r['challenger'])} | "
              f"{r['test_gain']:+.4f} | "
              f"{r['promoted']}/{r['canaries']} ({r['promoted_upper95']:.3f}) | "
              f"{r['stopped']} | {r['expired']} | {sessions} | {r['cost_median']:.1f} |")


if __name__ == "__main__":
    main()
