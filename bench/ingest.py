"""Log ingest + validation throughput, and how it grows with batch size and history.

Reads the first N rows of a simulator log (NDJSON; also written out as CSV and as
all-string Parquet) through the same functions the retrain flow runs: read the new
rows, validate them with the Great Expectations suite, check the batch, write the
accepted and quarantined rows. Then the incremental case: N new rows appended to a
log whose earlier H rows are already committed.

    python3 ../shared/benchmarks/simulate_clicks.py --beir ../shared/benchmarks/scifact \\
        --split train --out /tmp/sim1m --batches 1 --sessions-per-query 124 --seed 7
    .venv/bin/python bench/ingest.py --logs /tmp/sim1m/batch-001.jsonl
"""

from __future__ import annotations

import argparse
import functools
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from embedloop.corpus import load_corpus
from embedloop.ledger import (
    commit_ledger,
    load_ledger,
    save_batch,
    seen_event_ids,
)
from embedloop.logs import discover_log_files, read_new_rows
from embedloop.validation import check_batch, validate_logs

REPO = Path(__file__).resolve().parents[1]


def head_lines(source: Path, n: int, out: Path, skip: int = 0) -> Path:
    with source.open("rb") as f, out.open("wb") as g:
        g.writelines(itertools.islice(f, skip, skip + n))
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
    new, times["read"] = timed(lambda: read_new_rows(discover_log_files(log), ledger.cursors))
    result, times["validate"] = timed(lambda: validate_logs(
        new.frame, known, functools.partial(seen_event_ids, state, ledger),
        max_query_chars=2000, max_position=100))
    verdict, times["check"] = timed(lambda: check_batch(result, max_quarantine_share=0.5,
                                                        min_clicks=1))
    batch_id = f"b{len(ledger.batches):04d}"
    _, times["write"] = timed(lambda: (
        save_batch(state, batch_id, result.accepted, result.quarantined),
        commit_ledger(state, ledger, new.cursors, batch_id)))
    assert verdict.ok, verdict.problems
    assert len(result.accepted) + len(result.quarantined) == len(new.frame)
    times["rows"] = len(new.frame)
    times["quarantined"] = len(result.quarantined)
    times["total"] = sum(v for k, v in times.items() if k not in ("rows", "quarantined"))
    return times


def report(label: str, t: dict[str, float]) -> None:
    stages = "  ".join(f"{k} {t[k]:.2f}" for k in ("read", "validate", "check", "write"))
    print(f"{label:<34} {int(t['rows']):>9,} rows {t['total']:7.2f} s "
          f"{t['rows'] / t['total']:>9,.0f} rows/s   [{stages}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", type=Path, required=True, help="a simulator NDJSON file")
    ap.add_argument("--corpus", type=Path,
                    default=REPO.parent / "shared/benchmarks/scifact/corpus.jsonl")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--formats", default="ndjson,csv,parquet")
    ap.add_argument("--increment", type=int, default=10000)
    args = ap.parse_args()
    known = set(load_corpus(args.corpus)["doc_id"])
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("one batch, fresh state (read + validate + check + write):")
        for n in sizes:
            folder = work / f"n{n}"
            folder.mkdir()
            ndjson = head_lines(args.logs, n, folder / "logs.jsonl")
            for kind in args.formats.split(","):
                path = ndjson if kind == "ndjson" else as_format(ndjson, kind)
                report(f"  {kind}", one_batch(path, work / f"state-{kind}-{n}", known))

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
                one_batch(log, state, known)
            else:
                log.touch()
            with log.open("ab") as f, args.logs.open("rb") as src:
                f.writelines(itertools.islice(src, history, history + args.increment))
            report(f"  H = {history:,}", one_batch(log, state, known))


if __name__ == "__main__":
    main()
