"""The closed loop: the users' clicks are on what the live model showed them.

1. Bootstrap: the base model becomes champion v1 with its index (a retrain with no logs).
2. Start the search service (`embedloop api`, its own process) over that home.
3. Each simulated day: ../shared/benchmarks/simulate_clicks.py --ranker-url plays the
   front end and the users against the live service (a new seed each day) and writes
   that day's log; the nightly retrain runs on it; the service follows any promotion
   by itself, and the next day's users see the new champion's rankings.
4. After each day the champion is scored on the TEST qrels (never seen by the loop).

Prints a markdown table, day by day, and compares the end with a BM25-logged protocol
run when --compare names its results.json.

    .venv/bin/python -u bench/closed_loop.py --out bench/out/closed-loop --days 7 \\
        --compare bench/out/scifact/results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import serve, stop  # noqa: E402
from protocol import REPO, SIMULATOR, read_jsonl, read_qrels, score_version  # noqa: E402


def wait_until_serving(base: str, version: str, timeout: float = 300) -> float:
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
                health = json.load(response)
        except OSError:
            health = {}
        if (health.get("serving") or {}).get("model_version") == version:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the service did not start serving v{version}: {health}")
        time.sleep(0.2)


def canary_cell(day: dict[str, Any]) -> str:
    judged, started = day.get("canary") or {}, day.get("canary_started")
    cell = (f"v{judged['version']} {judged['action']} ({int(judged.get('sessions', 0))} "
            f"sessions)" if judged else "")
    return "; ".join(x for x in (cell, f"v{started} started" if started else "") if x) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/closed-loop")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=100, help="day d simulates with seed + d")
    ap.add_argument("--start", default="2026-03-01")
    ap.add_argument("--inject-relevant", default="0",
                    help="the simulator's chance of mixing in a missed relevant document "
                         "(0: users see exactly what the service ranked)")
    ap.add_argument("--canary-share", type=float, default=0.0,
                    help="canary_share for the service and the retrains (0: no canary)")
    ap.add_argument("--score-split", default="test")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--compare", type=Path, help="a bench/protocol.py results.json")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    os.environ.setdefault("PREFECT_HOME", str((args.out / "prefect").resolve()))
    (args.out / "prefect").mkdir(parents=True, exist_ok=True)
    from embedloop.config import load_settings
    from embedloop.production import Production
    from flows.retrain import retrain

    home, arrived = (args.out / "home").resolve(), (args.out / "arrived").resolve()
    arrived.mkdir(parents=True)
    overrides = {"home": str(home), "logs": str(arrived),
                 "corpus": str((args.beir / "corpus.jsonl").resolve()),
                 "canary_share": args.canary_share}
    os.environ["EMBEDLOOP_CANARY_SHARE"] = str(args.canary_share)  # for the service
    settings = load_settings(args.config, **overrides)
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    truth = read_qrels(args.beir / "qrels" / f"{args.score_split}.tsv")

    started = time.perf_counter()
    retrain(reason="closed loop: bootstrap", trigger="schedule", config_file=str(args.config),
            overrides=overrides)
    days: list[dict[str, Any]] = [{"day": 0, "outcome": "base model", "champion": "1",
                                   "wall_s": time.perf_counter() - started,
                                   **score_version(settings, "1", queries, truth)}]
    print(json.dumps(days[0]), flush=True)
    service_args = argparse.Namespace(config=args.config, home=home)
    server, base = serve(service_args, 32)
    try:
        for day in range(1, args.days + 1):
            date = dt.date.fromisoformat(args.start) + dt.timedelta(days=day - 1)
            out = args.out / "logs" / f"day-{day:02d}"
            started = time.perf_counter()
            subprocess.run([sys.executable, str(SIMULATOR), "--beir", str(args.beir),
                            "--split", "train", "--out", str(out), "--batches", "1",
                            "--days-per-batch", "1", "--start", date.isoformat(),
                            "--seed", str(args.seed + day),
                            "--inject-relevant", args.inject_relevant,
                            "--ranker-url", f"{base}/search"], check=True)
            simulate_s = time.perf_counter() - started
            for log in sorted(out.glob("*.jsonl")):
                shutil.copy(log, arrived / f"day-{day:02d}-{log.name}")
            started = time.perf_counter()
            try:
                summary = retrain(reason=f"closed loop: day {day}", trigger="schedule",
                                  config_file=str(args.config), overrides=overrides)
            except Exception as exc:  # a rejected day is a result, not a crash of the bench
                summary = {"outcome": "rejected", "decision_reason": str(exc)}
            retrain_s = time.perf_counter() - started
            champion = Production.from_settings(settings).state().champion or "1"
            follow_s = wait_until_serving(base, champion)
            row = {"day": day, "outcome": summary["outcome"], "champion": champion,
                   "why": summary.get("decision_reason", ""), "pairs": summary.get("pairs", 0),
                   "canary": summary.get("canary", {}),
                   "canary_started": summary.get("canary_started"),
                   "pool": summary.get("eval_queries", 0), "gate": summary.get("gate", {}),
                   "simulate_s": simulate_s, "wall_s": retrain_s, "service_followed_s": follow_s,
                   **score_version(settings, champion, queries, truth)}
            days.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop(server)

    (args.out / "results.json").write_text(json.dumps({"days": days}, indent=1))
    print(f"\n| day | decision | champion | {args.score_split} NDCG@10 | MRR@10 | Recall@100 "
          f"| pairs | pool | canary | retrain s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in days:
        print(f"| {d['day']} | {d['outcome']} | v{d['champion']} | {d['ndcg@10']:.4f} | "
              f"{d['mrr@10']:.4f} | {d['recall@100']:.4f} | {d.get('pairs', '-')} | "
              f"{d.get('pool', '-')} | {canary_cell(d)} | {d['wall_s']:.0f} |")
    promotions = sum(d["outcome"] == "promoted" for d in days)
    worse = [d["day"] for prev, d in zip(days, days[1:], strict=False)
             if d["ndcg@10"] < prev["ndcg@10"] - 1e-9]
    print(f"\n{promotions} promotion(s), 0 rollbacks (none asked for); days on which the "
          f"champion's {args.score_split} score fell: {worse or 'none'}")
    if args.compare:
        cycles = json.loads(args.compare.read_text())["cycles"]
        print(f"BM25-logged protocol ({args.compare}): base {cycles[0]['ndcg@10']:.4f} -> "
              f"{cycles[-1]['ndcg@10']:.4f} after {len(cycles) - 1} cycles; closed loop: "
              f"{days[0]['ndcg@10']:.4f} -> {days[-1]['ndcg@10']:.4f} after {args.days} days")


if __name__ == "__main__":
    main()
