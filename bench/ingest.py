"""Log ingest + validation throughput and peak memory, and how they grow with batch
size and history.

Reads the first N rows of a simulator log (NDJSON; also written out as CSV and as
all-string Parquet) through the same functions the retrain flow runs: read the new
rows and validate them with the Great Expectations suite chunk by chunk (the rows
streamed to Parquet), check the batch, store the batch. Each measurement runs in a
process of its own, so its peak RSS is its own. Then the incremental case: N new rows
appended to a log whose earlier H rows are already committed.

    python3 ../shared/benchmarks/simulate_clicks.py --beir ../shared/benchmarks/scifact \\
        --split train --out /tmp/sim1m --batches 1 --sessions-per-query 124 --seed 7
    .venv/bin/python bench/ingest.py --logs /tmp/sim1m/batch-001.jsonl
    # 10M rows: the 1M file ten times over, event ids renamed per copy
    .venv/bin/python bench/ingest.py --logs /tmp/sim1m/batch-001.jsonl --repeat 10 \\
        --sizes 10000000 --formats ndjson --increment 0
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from embedloop.ingest.corpus import load_corpus
from embedloop.ingest.ledger import (
    commit_ledger,
    load_ledger,
    save_batch,
    seen_event_ids,
)
from embedloop.ingest.logs import Ingested, discover_log_files, iter_new_rows
from embedloop.ingest.validation import check_batch, validate_in_chunks

REPO = Path(__file__).resolve().parents[1]


def head_lines(source: Path, n: int, out: Path, skip: int = 0, repeat: int = 1) -> Path:
    """The first n lines of `source` (read `repeat` times over, each copy's event ids
    renamed, for batches bigger than the simulator's file)."""
    with out.open("wb") as g:
        left = n
        for copy in range(repeat):
            with source.open("rb") as f:
                lines = itertools.islice(f, skip if copy == 0 else 0, None)
                for line in itertools.islice(lines, left):
                    g.write(line.replace(b'"event_id": "e', f'"event_id": "c{copy}e'.encode(), 1)
                            if copy else line)
                    left -= 1
            if not left:
                break
    return out


def as_format(ndjson: Path, kind: str) -> Path:
    """The same rows as CSV or Parquet (every value a string there: malformed rows mix
    types within a column, which a Parquet column cannot hold)."""
    frame = pd.read_json(ndjson, lines=True, dtype=False, convert_dates=False)
    frame = frame.astype(object).where(frame.notna(), None)
    if kind == "csv":
        path = ndjson.with_suffix(".csv")
        frame.to_csv(path, index=False)
    else:
        path = ndjson.with_suffix(".parquet")
        frame.map(lambda v: None if v is None else str(v)).to_parquet(path, index=False)
    return path


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def one_batch(log: Path, state: Path, known: set[str]) -> dict[str, float]:
    """One retrain's ingest and validation of whatever `log` holds beyond the ledger."""
    times: dict[str, float] = {}
    ledger, times["ledger"] = timed(lambda: load_ledger(state))
    got = Ingested()
    frames = got.frames(iter_new_rows(discover_log_files(log), ledger.cursors))
    batch_id = f"b{len(ledger.batches):04d}"
    result, times["read+validate"] = timed(lambda: validate_in_chunks(
        frames, known, functools.partial(seen_event_ids, state, ledger),
        state / "work" / batch_id, max_query_chars=2000, max_position=100))
    verdict, times["check"] = timed(lambda: check_batch(result, max_quarantine_share=0.5,
                                                        min_clicks=1))
    _, times["write"] = timed(lambda: (
        save_batch(state, batch_id, result.accepted_file, result.quarantine_file),
        commit_ledger(state, ledger, got.cursors, batch_id)))
    assert verdict.ok, verdict.problems
    times["rows"] = result.input_rows
    times["quarantined"] = result.quarantined_count
    assert result.accepted_count + result.quarantined_count == result.input_rows
    times["total"] = sum(v for k, v in times.items() if k not in ("rows", "quarantined"))
    times["peak_rss_mb"] = peak_rss_mb()
    return times


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not ru_maxrss: Linux carries the parent's
    peak over into a child, and the parent here held a whole batch to write it out."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def in_own_process(log: Path, state: Path, corpus: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--single", str(log), "--state", str(state),
                          "--corpus", str(corpus)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(label: str, t: dict[str, float]) -> None:
    stages = "  ".join(f"{k} {t[k]:.2f}" for k in ("read+validate", "check", "write"))
    print(f"{label:<34} {int(t['rows']):>10,} rows {t['total']:7.2f} s "
          f"{t['rows'] / t['total']:>9,.0f} rows/s  peak RSS {t['peak_rss_mb']:,.0f} MB  "
          f"[{stages}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", type=Path, help="a simulator NDJSON file")
    ap.add_argument("--corpus", type=Path,
                    default=REPO.parent / "shared/benchmarks/scifact/corpus.jsonl")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--formats", default="ndjson,csv,parquet")
    ap.add_argument("--increment", type=int, default=10000, help="0: no incremental runs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="read --logs this many times over (event ids renamed per copy)")
    ap.add_argument("--single", type=Path, help=argparse.SUPPRESS)  # one batch, this process
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        known = set(load_corpus(args.corpus)["doc_id"])
        print(json.dumps(one_batch(args.single, args.state, known)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        print("one batch, fresh state (read + validate + check + write), own process:")
        for n in sizes:
            folder = work / f"n{n}"
            folder.mkdir()
            ndjson = head_lines(args.logs, n, folder / "logs.jsonl", repeat=args.repeat)
            for kind in args.formats.split(","):
                path = ndjson if kind == "ndjson" else as_format(ndjson, kind)
                report(f"  {kind}", in_own_process(path, work / f"state-{kind}-{n}",
                                                   args.corpus))
                if path != ndjson:
                    path.unlink()
            ndjson.unlink()

        if not args.increment:
            return
        print(f"\nincremental: {args.increment:,} new rows appended after H committed rows "
              f"(NDJSON):")
        total = sum(1 for _ in args.logs.open("rb"))
        for history in [0, *(min(n, total - args.increment) for n in sizes)]:
            folder = work / f"inc{history}"
            folder.mkdir()
            log = folder / "logs.jsonl"
            state = work / f"state-inc-{history}"
            if history:
                head_lines(args.logs, history, log)
                in_own_process(log, state, args.corpus)
            else:
                log.touch()
            with log.open("ab") as f, args.logs.open("rb") as src:
                f.writelines(itertools.islice(src, history, history + args.increment))
            report(f"  H = {history:,}", in_own_process(log, state, args.corpus))


if __name__ == "__main__":
    main()
