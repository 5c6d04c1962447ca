"""How many interleaved sessions a canary needs to tell a candidate from the champion.

The home's champion and a kept candidate are served by `embedloop api` with every
session interleaved (canary_share 1). ../shared/benchmarks/simulate_clicks.py plays the
users over the TEST queries (never trained on) with a new seed per round, and the logged
clicks are credited by team exactly as a retrain would (interleaving.credit). Reported:
the sign test's p as sessions accumulate, and the first session count at which it falls
below the alpha of the canary's first look, per round and over all rounds in a row.
Beside it, the offline gate's evidence on the same candidate (its MLflow run).

    .venv/bin/python -u bench/canary.py --home bench/out/scifact/home --candidate 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import get, serve, stop  # noqa: E402
from protocol import REPO, SIMULATOR, read_jsonl, read_qrels, score_version  # noqa: E402

CHECKPOINTS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000)


def ensure_index(settings: Any, version: str) -> str:
    """The candidate's own index (a canary is served with it); built if the run that
    kept the candidate did not save one."""
    from embedloop.corpus import corpus_fingerprint, document_texts, load_corpus
    from embedloop.encoding import choose_runtime, encode, load_model
    from embedloop.production import Production

    production = Production.from_settings(settings)
    found = production.index_for(version)
    if found is not None:
        return found
    runtime = choose_runtime(settings.encode_precision, settings.encode_backend)
    corpus = load_corpus(settings.corpus)
    model = load_model(production.model_path(version), runtime.device, settings.max_seq_length)
    vectors = encode(model, document_texts(corpus), role="document",
                     batch_size=settings.encode_batch_size, precision=runtime.encoder,
                     show_progress=True)
    index = production.store.build(vectors, list(corpus["doc_id"]), precision=runtime.encoder,
                                   titles=list(corpus["title"]))
    return production.save_index(index, version, corpus_fingerprint(corpus)).version


def sessions_in_order(log: Path) -> list[tuple[str, list[tuple[str, str | None, bool]]]]:
    """(session, [(session, team, clicked) per shown result]) in the order users came."""
    by_session: dict[str, list[tuple[str, str | None, bool]]] = {}
    first_seen: dict[str, str] = {}
    for row in read_jsonl(log):
        session = row.get("session_id")
        if not isinstance(session, str):
            continue
        first_seen.setdefault(session, str(row.get("ts")))
        by_session.setdefault(session, []).append(
            (session, row.get("team"), row.get("clicked") is True))
    return [(s, by_session[s]) for s in sorted(by_session, key=first_seen.__getitem__)]


def first_credible(sessions: list[list[tuple[str, str | None, bool]]], champion: str,
                   candidate: str, alpha: float) -> tuple[int | None, list[dict[str, Any]]]:
    """The first session count at which the candidate wins at p < alpha, and the
    evidence at each checkpoint."""
    from embedloop.interleaving import InterleavingEvidence, credit

    first, curve = None, []
    counted = wins = losses = 0
    checkpoints = set(CHECKPOINTS) | {len(sessions)}
    for n, session in enumerate(sessions, start=1):
        vote = credit(session, champion=champion, candidate=candidate)  # one session
        counted, wins, losses = (counted + vote.sessions, wins + vote.candidate_wins,
                                 losses + vote.champion_wins)
        evidence = InterleavingEvidence(counted, wins, losses)
        if first is None and wins > losses and evidence.p_value < alpha:
            first = n
        if n in checkpoints:
            curve.append({"sessions": n, "candidate_wins": wins, "champion_wins": losses,
                          "ties": evidence.ties, "p_value": evidence.p_value})
    return first, curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--candidate", required=True, help="a kept version to canary")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--split", default="test", help="whose queries the users ask")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/canary")
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.production import Production
    from embedloop.promotion import alpha_for_look

    overrides = {"home": str(args.home.resolve()),
                 "corpus": str((args.beir / "corpus.jsonl").resolve())}
    settings = load_settings(args.config, **overrides)
    production = Production.from_settings(settings)
    champion = production.state().champion
    assert champion is not None and champion != args.candidate
    ensure_index(settings, args.candidate)
    production.start_canary(args.candidate)
    alpha = alpha_for_look(settings.significance_alpha, 1)

    os.environ["EMBEDLOOP_CANARY_SHARE"] = "1.0"  # for the service: every session
    args.out.mkdir(parents=True, exist_ok=True)
    server, base = serve(argparse.Namespace(config=args.config, home=args.home.resolve()), 32)
    rounds: list[dict[str, Any]] = []
    every: list[list[tuple[str, str | None, bool]]] = []
    try:
        deadline = time.monotonic() + 120
        while (get(f"{base}/healthz")[1] or {}).get("canary") is None:
            if time.monotonic() > deadline:
                raise SystemExit("the service did not load the canary")
            time.sleep(0.5)
        for r in range(args.rounds):
            out = args.out / f"round-{r + 1}"
            started = time.perf_counter()
            subprocess.run([sys.executable, str(SIMULATOR), "--beir", str(args.beir),
                            "--split", args.split, "--out", str(out), "--batches", "1",
                            "--days-per-batch", "1", "--start", f"2026-04-{r + 1:02d}",
                            "--seed", str(args.seed + r), "--malformed-rate", "0",
                            "--inject-relevant", "0", "--ranker-url", f"{base}/search"],
                           check=True, capture_output=True)
            sessions = [rows for _, rows in sessions_in_order(out / "batch-001.jsonl")]
            every += sessions
            first, curve = first_credible(sessions, champion, args.candidate, alpha)
            rounds.append({"round": r + 1, "sessions": len(sessions), "first_credible": first,
                           "final": curve[-1], "seconds": time.perf_counter() - started})
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        stop(server)
        production.end_canary("benchmark over")

    first_all, curve_all = first_credible(every, champion, args.candidate, alpha)
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    truth = read_qrels(args.beir / "qrels" / f"{args.split}.tsv")
    scores = {v: score_version(settings, v, queries, truth)["ndcg@10"]
              for v in (champion, args.candidate)}
    run_id = production.registry.version_info(args.candidate).run_id
    gate = {k.removeprefix("gate."): v for k, v in
            production.registry.client.get_run(run_id).data.metrics.items()
            if k.startswith("gate.")}
    result = {"champion": champion, "candidate": args.candidate, "alpha_look_1": alpha,
              "test_ndcg@10": scores, "rounds": rounds, "all_rounds_first_credible": first_all,
              "curve": curve_all, "offline_gate": gate}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))

    print(f"\nchampion v{champion} {scores[champion]:.4f}, candidate v{args.candidate} "
          f"{scores[args.candidate]:.4f} on {args.split} NDCG@10; canary judged at look 1 "
          f"(alpha {alpha:.4f})")
    print("\n| sessions | candidate wins | champion wins | ties / no click | sign-test p |")
    print("|---|---|---|---|---|")
    for point in curve_all:
        print(f"| {point['sessions']} | {point['candidate_wins']} | {point['champion_wins']} "
              f"| {point['ties']} | {point['p_value']:.2g} |")
    firsts = [r["first_credible"] for r in rounds]
    print(f"\nfirst credible (p < {alpha:.4f}) per round of {rounds[0]['sessions']} sessions: "
          f"{firsts}; over all rounds in a row: {first_all}")
    if gate:
        print(f"offline gate on the pool: {gate.get('incumbent', 0):.4f} -> "
              f"{gate.get('candidate', 0):.4f} ({gate.get('delta', 0):+.4f}) on "
              f"{gate.get('eval_queries', 0):.0f} queries, p={gate.get('p_value', 1):.3f} "
              f"at look {gate.get('look', 1):.0f}; about {gate.get('queries_needed', 0):.0f} "
              f"pool queries needed")


if __name__ == "__main__":
    main()
