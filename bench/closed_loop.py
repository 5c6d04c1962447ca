"""The closed loop: the users' clicks are on what the live model showed them.

1. Bootstrap: the base model becomes champion v1 with its index (a retrain with no logs).
2. Start the search service (`embedloop api`, its own process) over that home.
3. Each simulated day: ../shared/benchmarks/simulate_clicks.py --ranker-url plays the
   front end and the users against the live service (a new seed each day) and writes
   that day's log; the nightly retrain runs on it; the service follows any promotion
   by itself, and the next day's users see the new champion's rankings.
4. After each day the champion, and the candidate the night trained, are scored on the
   TEST qrels (never seen by the loop).

The recommended settings: canary_share 0.2 (every session of a pool query is
interleaved, with a canary or, after a promotion, with the previous champion). Prints a
markdown table, day by day, and compares the end with a BM25-logged protocol run when
--compare names its results.json.

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


def online_cell(day: dict[str, Any]) -> str:
    """The interleaved comparisons the night judged: who, sessions, wins-losses, evidence
    against its boundary, and what happened."""
    cells = []
    for c in day.get("online", []):
        m = {k.rsplit(".", 1)[1]: v for k, v in c.get("metrics", {}).items()}
        cells.append(f"{c['source']} v{c['challenger']}/v{c['opponent']}: "
                     f"{int(m.get('sessions', 0))} s, {int(m.get('wins', 0))}-"
                     f"{int(m.get('losses', 0))}, {m.get('evidence', 0):.1f}/"
                     f"{m.get('boundary', 0):.1f} {c['action']}")
    if day.get("canary_started"):
        cells.append(f"v{day['canary_started']} canaried")
    return "; ".join(cells) or "-"


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
    ap.add_argument("--canary-share", type=float, default=0.2,
                    help="canary_share for the service and the retrains (0: no canary)")
    ap.add_argument("--score-split", default="test")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--compare", type=Path, help="a bench/protocol.py results.json")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    os.environ.setdefault("PREFECT_HOME", str((args.out / "prefect").resolve()))
    (args.out / "prefect").mkdir(parents=True, exist_ok=True)
    from embedloop.config import load_settings
    from embedloop.flows.retrain import retrain
    from embedloop.production.champion import Production

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
            candidate = summary.get("candidate_version")
            row = {"day": day, "outcome": summary["outcome"], "champion": champion,
                   "why": summary.get("decision_reason", ""), "pairs": summary.get("pairs", 0),
                   "online": summary.get("online", []), "offline": summary.get("offline"),
                   "canary_started": summary.get("canary_started"),
                   "candidate": candidate, "judged_against": summary.get("judged_against"),
                   "pool": summary.get("eval_queries", 0),
                   "evidence": summary.get("evidence", {}),
                   "simulate_s": simulate_s, "wall_s": retrain_s, "service_followed_s": follow_s,
                   **score_version(settings, champion, queries, truth)}
            if candidate:  # what the night trained, on the same test queries
                row["candidate_ndcg@10"] = score_version(settings, candidate, queries,
                                                         truth)["ndcg@10"]
            days.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop(server)

    (args.out / "results.json").write_text(json.dumps({"days": days}, indent=1))
    print(f"\n| day | decision | champion | champion's {args.score_split} NDCG@10 | the night's "
          f"candidate: offline, its {args.score_split} NDCG@10 | pool over shown documents: "
          f"Δ | users' evidence (sessions, won-lost, evidence/boundary) | retrain s |")
    print("|---|---|---|---|---|---|---|---|")
    for d in days:
        pool = d.get("evidence", {})
        shown = (f"{pool['pool.condensed_candidate'] - pool['pool.condensed_incumbent']:+.4f}"
                 if "pool.condensed_candidate" in pool else "-")
        cand = (f"v{d['candidate']} {d.get('offline', '')}, {d['candidate_ndcg@10']:.4f}"
                if d.get("candidate_ndcg@10") is not None else "-")
        print(f"| {d['day']} | {d['outcome']} | v{d['champion']} | {d['ndcg@10']:.4f} | "
              f"{cand} | {shown} | {online_cell(d)} | {d['wall_s']:.0f} |")
    promotions = sum(d["outcome"] == "promoted" for d in days)
    worse = [d["day"] for prev, d in zip(days, days[1:], strict=False)
             if d["ndcg@10"] < prev["ndcg@10"] - 1e-9]
    rollbacks = sum(d["outcome"] == "rolled back" for d in days)
    best = max((d["candidate_ndcg@10"] for d in days if d.get("candidate_ndcg@10")),
               default=float("nan"))
    print(f"\n{promotions} promotion(s), {rollbacks} rollback(s) by the watch; days on which "
          f"the champion's {args.score_split} score fell: {worse or 'none'}; best candidate "
          f"trained {best:.4f}")
    if args.compare:
        cycles = json.loads(args.compare.read_text())["cycles"]
        print(f"BM25-logged protocol ({args.compare}): base {cycles[0]['ndcg@10']:.4f} -> "
              f"{cycles[-1]['ndcg@10']:.4f} after {len(cycles) - 1} cycles; closed loop: "
              f"{days[0]['ndcg@10']:.4f} -> {days[-1]['ndcg@10']:.4f} after {args.days} days")


if __name__ == "__main__":
    main()
