"""Great Expectations suites (in `expectations/`) run over logs and the corpus.

Row-level: every row either passes every expectation of `interaction_log.json`
(accepted) or is quarantined with all of its reasons; a batch of any size is validated
chunk by chunk, its rows streamed to Parquet files (`validate_in_chunks`). Batch-level:
`interaction_batch.json` runs over a one-row summary of the batch; a failure
there stops the run before training.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedloop.ingest.schema import LOG_FIELDS, REQUIRED_FIELDS, is_missing, to_typed_frame

EXPECTATIONS_DIR = Path(__file__).resolve().parents[3] / "expectations"
# Clocks drift; a row stamped a few minutes ahead is not "from the future".
CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    success: bool
    # (code, reason, row index labels that failed) for each failed expectation
    failures: list[tuple[str, str, list[Any]]]
    result: dict[str, Any]  # the GX validation result, JSON-ready


@dataclass
class LogValidation:
    input_rows: int
    accepted_count: int
    quarantined_count: int
    accepted_clicks: int
    outcome: SuiteOutcome
    reason_counts: dict[str, int] = field(default_factory=dict)  # primary reason -> rows
    # The rows, typed (accepted) or raw with reasons (QUARANTINE_SCHEMA): in memory from
    # `validate_logs`, in Parquet files from `validate_in_chunks`, read on first use.
    accepted_file: Path | None = None
    quarantine_file: Path | None = None
    frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    event_ids: np.ndarray | None = field(default=None, repr=False)  # typed, every input row

    @property
    def accepted(self) -> pd.DataFrame:
        return self._rows("accepted", self.accepted_file)

    @property
    def quarantined(self) -> pd.DataFrame:
        return self._rows("quarantined", self.quarantine_file)

    def _rows(self, name: str, path: Path | None) -> pd.DataFrame:
        if name not in self.frames:
            assert path is not None
            self.frames[name] = pd.read_parquet(path)
        return self.frames[name]

    def quarantine_sample(self, n: int) -> pd.DataFrame:
        """The first `n` quarantined rows, without reading a large quarantine whole."""
        if "quarantined" in self.frames or self.quarantine_file is None:
            return self.quarantined.head(n)
        batches = pq.ParquetFile(self.quarantine_file).iter_batches(batch_size=max(n, 1))
        first = next(batches, None)
        return (first.to_pandas() if first is not None
                else QUARANTINE_SCHEMA.empty_table().to_pandas())

    @property
    def quarantined_share(self) -> float:
        return self.quarantined_count / self.input_rows if self.input_rows else 0.0


# The columns of the Parquet files a batch's rows are kept in.
ACCEPTED_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("session_id", pa.string()), ("doc_id", pa.string()),
    ("query", pa.string()), ("position", pa.float64()), ("clicked", pa.bool_()),
    ("dwell_ms", pa.float64()), ("team", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
    ("ts_epoch", pa.float64()), ("source", pa.string()), ("line", pa.int64())])
QUARANTINE_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("reason_code", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class BatchVerdict:
    ok: bool
    problems: list[str]  # one sentence each, with the numbers
    outcome: SuiteOutcome


def load_suite_json(name: str, directory: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    return json.loads((directory / f"{name}.json").read_text())


@functools.cache
def _gx_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # its INFO line about a temporary docs directory reached every run's console
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


# One context per process, and one dataframe asset in it that every validation reuses:
# adding and deleting an asset per validation made GX write its whole configuration out
# each time (a third of a second per batch of logs). Batches are not shared between
# threads, so validations take turns.
_GX_LOCK = threading.Lock()


@functools.cache
def _whole_dataframe() -> Any:
    context = _gx_context()
    asset = context.data_sources.add_or_update_pandas("embedloop").add_dataframe_asset("frames")
    return asset.add_batch_definition_whole_dataframe("all")


def with_parameters(expectations: list[dict[str, Any]], parameters: dict[str, Any],
                    suite: str) -> list[dict[str, Any]]:
    """The suite's expectations with each `{"$PARAMETER": name}` replaced by its value.
    GX would parse each one as an arithmetic expression (pyparsing, ~0.3 s apiece, five
    per run); our suites name settings, nothing more."""
    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
            name = value["$PARAMETER"]
            if name not in parameters:
                raise KeyError(f"expectation suite {suite!r} uses $PARAMETER {name!r}, "
                               f"which is not one of {sorted(parameters)}")
            return parameters[name]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return [resolve(e) for e in expectations]


def run_suite(frame: pd.DataFrame, suite_json: dict[str, Any],
              parameters: dict[str, Any] | None = None) -> SuiteOutcome:
    """Validate `frame` with a suite; failing rows are reported by index label."""
    import great_expectations as gx

    expectations = with_parameters(suite_json["expectations"], parameters or {},
                                   suite_json["name"])
    suite = gx.ExpectationSuite(name=suite_json["name"], expectations=expectations)
    with _GX_LOCK:
        batch = _whole_dataframe().get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                      "partial_unexpected_count": 20,
                                                      "return_unexpected_index_query": False})
    failures = []
    for item in result.results:
        if item.success:
            continue
        meta = item.expectation_config.meta or {}
        rows = list(item.result.get("unexpected_index_list") or [])
        if item.exception_info and item.exception_info.get("raised_exception"):
            message = item.exception_info.get("exception_message", "")
            raise RuntimeError(f"expectation {item.expectation_config.type} crashed: {message}")
        failures.append((meta.get("code", item.expectation_config.type),
                         meta.get("reason", item.expectation_config.type), rows))
    return SuiteOutcome(suite=suite_json["name"], success=bool(result.success),
                        failures=failures, result=_json_ready(result.to_json_dict()))


NULL_CHECKS = {"expect_column_values_to_not_be_null", "expect_column_values_to_be_null"}


def run_suite_on_distinct_values(frame: pd.DataFrame, suite_json: dict[str, Any],
                                 parameters: dict[str, Any] | None = None) -> SuiteOutcome:
    """`run_suite` for a suite whose every expectation judges one column's value alone:
    each column's distinct values are validated once and the verdicts mapped back to the
    rows that hold them. A million log rows hold a few thousand distinct queries, doc ids
    and positions, so GX does a fraction of the work for the same per-row answers."""
    by_column: dict[str, list[int]] = {}
    expectations = suite_json["expectations"]
    for number, expectation in enumerate(expectations):
        by_column.setdefault(expectation["kwargs"]["column"], []).append(number)
    found: dict[int, tuple[str, str, list[Any]]] = {}
    results: list[dict[str, Any]] = []
    for column, numbers in by_column.items():
        if all(expectations[n]["type"] in NULL_CHECKS for n in numbers):
            # Only null or not: every non-null value is alike (a million event ids -> 2).
            missing = frame[column].isna().to_numpy()
            present = frame[column][~missing]
            uniques = [present.iloc[0]] if len(present) else []
            codes = np.where(missing, len(uniques), 0)
            if missing.any():
                uniques.append(None)
        else:
            codes, uniques = pd.factorize(frame[column], use_na_sentinel=False)
        distinct = pd.DataFrame({column: pd.Series(uniques, dtype=frame[column].dtype)})
        outcome = run_suite(distinct, {"name": f"{suite_json['name']}:{column}",
                                       "expectations": [expectations[n] for n in numbers]},
                            parameters)
        failed = {code: (reason, positions) for code, reason, positions in outcome.failures}
        by_code = {(r.get("expectation_config") or {}).get("meta", {}).get("code"): r
                   for r in outcome.result.get("results", [])}
        for number in numbers:
            expectation = expectations[number]
            code = expectation.get("meta", {}).get("code", expectation["type"])
            rows: list[Any] = []
            if code in failed:
                reason, positions = failed[code]
                rows = frame.index[np.isin(codes, positions)].tolist()
                if rows:
                    found[number] = (code, reason, rows)
            results.append({**by_code.get(code, {}), "rows_checked": len(frame),
                            "rows_failing": len(rows)})
    return SuiteOutcome(
        suite=suite_json["name"], success=not found,
        failures=[found[n] for n in sorted(found)],  # in suite order: the first is primary
        result={"success": not found, "suite": suite_json["name"], "rows": len(frame),
                "note": "each column's distinct values were validated once: GX's counts are "
                        "of distinct values, rows_failing of rows",
                "results": results})


def _json_ready(data: Any) -> Any:
    """GX results may carry values (sets of 5k doc ids, NaN) that bloat or break JSON."""
    if isinstance(data, dict):
        return {k: (f"<{len(v)} values>" if k == "value_set" and isinstance(v, list | set)
                    and len(v) > 20 else _json_ready(v)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_json_ready(v) for v in data]
    if isinstance(data, float) and math.isnan(data):
        return None
    return data


SeenIds = Collection[str] | Callable[[list[str]], Collection[str]]


def mark_duplicates(event_ids: pd.Series, seen: SeenIds) -> pd.Series:
    """True for a row whose event_id was accepted by an earlier run or appeared
    earlier in this batch (the first occurrence in the batch is kept). `seen` is the
    ids accepted before, or a lookup that answers which of the given ids were."""
    in_batch = event_ids.duplicated(keep="first") & event_ids.notna()
    if callable(seen):
        seen = seen(event_ids.dropna().unique().tolist())
    earlier = event_ids.isin(seen) if seen else pd.Series(False, index=event_ids.index)
    return in_batch | earlier


def _raw_json(record: dict[str, Any]) -> str:
    """The row as it came, for the quarantine: every required field, and the optional
    ones (dwell_ms, team) where the row had them."""
    return json.dumps({f: record.get(f) for f in LOG_FIELDS
                       if f in REQUIRED_FIELDS or not is_missing(record.get(f))},
                      ensure_ascii=False, default=str)


def validate_logs(raw: pd.DataFrame, known_doc_ids: set[str], seen_event_ids: SeenIds,
                  *, max_query_chars: int, max_position: int,
                  now: datetime | None = None) -> LogValidation:
    """Split raw rows into accepted (typed) and quarantined (raw + reasons)."""
    raw = raw.reset_index(drop=True)
    typed = to_typed_frame(raw)
    typed["is_duplicate"] = mark_duplicates(typed["event_id"], seen_event_ids)
    typed["doc_in_corpus"] = typed["doc_id"].isin(known_doc_ids).astype(object)
    typed.loc[typed["doc_id"].isna(), "doc_in_corpus"] = None  # missing_doc_id says it
    now = now or datetime.now(UTC)
    parameters = {"max_ts_epoch": (now + CLOCK_SKEW).timestamp(),
                  "max_query_chars": max_query_chars, "max_position": max_position}
    suite = load_suite_json("interaction_log")
    checked = sorted({e["kwargs"]["column"] for e in suite["expectations"]})
    outcome = run_suite_on_distinct_values(typed[checked], suite, parameters)

    type_errors = typed["type_errors"].to_numpy()  # raw's 0..n-1 index: labels = positions
    all_bad_fields = typed["bad_fields"].to_numpy()
    reasons: dict[int, list[tuple[str, str]]] = {}
    for code, reason, rows in outcome.failures:
        reason = reason.format_map(parameters)  # "... ({max_query_chars} characters)"
        for i in rows:
            reasons.setdefault(i, []).append(
                (code, type_errors[i] if code == "wrong_type" else reason))
    for i, problems in reasons.items():
        # A value that failed to parse is also null in its typed column; say it once.
        bad_fields = all_bad_fields[i]
        if "row" in bad_fields:  # not a JSON object: every other complaint is noise
            reasons[i] = [(c, r) for c, r in problems if c == "wrong_type"]
        elif bad_fields:
            reasons[i] = [(c, r) for c, r in problems
                          if not (c.startswith("missing_") and c[8:] in bad_fields)]

    bad = sorted(reasons)
    quarantined = _quarantine_frame(raw, bad, {i: reasons[i] for i in bad})
    accepted = typed.drop(index=bad).drop(columns=["type_errors", "bad_fields", "is_duplicate",
                                                   "doc_in_corpus"])
    if len(accepted) + len(quarantined) != len(raw):  # the accounting promise, enforced
        raise AssertionError(f"row accounting broke: {len(accepted)} + {len(quarantined)} "
                             f"!= {len(raw)}")
    counts = Counter(quarantined["reason_code"])
    return LogValidation(
        input_rows=len(raw), accepted_count=len(accepted), quarantined_count=len(quarantined),
        accepted_clicks=int((accepted["clicked"] == True).sum()),  # noqa: E712 - object column
        outcome=outcome, reason_counts=dict(counts.most_common()),
        frames={"accepted": accepted.reset_index(drop=True), "quarantined": quarantined},
        event_ids=typed["event_id"].to_numpy())


class EarlierIds:
    """The event ids of a batch's earlier chunks, for the duplicate check across chunks:
    two 64-bit hashes an id, sorted (16 bytes an id, where a set of Python strings takes
    ~90). Two ids share both hashes with odds of about 1e-25 in a batch of ten million."""

    KEYS = ("embedloop-ids-a1", "embedloop-ids-b2")  # 16 bytes each, as pandas requires

    def __init__(self) -> None:
        self._first = np.empty(0, np.uint64)  # sorted
        self._second = np.empty(0, np.uint64)  # in the order of _first

    def _hashes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(pd.util.hash_array(ids, hash_key=key, categorize=False)  # type: ignore[return-value]
                     for key in self.KEYS)

    def add(self, ids: np.ndarray) -> None:
        ids = ids[pd.notna(ids)]
        first, second = self._hashes(ids.astype(object))
        order = np.argsort(first)
        first = np.concatenate([self._first, first[order]])
        second = np.concatenate([self._second, second[order]])
        merged = np.argsort(first, kind="stable")  # two sorted runs: a linear merge
        self._first, self._second = first[merged], second[merged]

    def find(self, ids: list[str]) -> set[str]:
        """The ids that an earlier chunk held."""
        if not ids or not len(self._first):
            return set()
        first, second = self._hashes(np.array(ids, dtype=object))
        lows = np.searchsorted(self._first, first, "left")
        highs = np.searchsorted(self._first, first, "right")
        return {ids[i] for i in np.flatnonzero(highs > lows)  # few: the duplicates
                if (self._second[lows[i]:highs[i]] == second[i]).any()}


def validate_in_chunks(chunks: Iterable[pd.DataFrame], known_doc_ids: set[str],
                       seen_event_ids: SeenIds, directory: Path, *, max_query_chars: int,
                       max_position: int, now: datetime | None = None,
                       progress: Callable[[int, int, int], None] | None = None
                       ) -> LogValidation:
    """`validate_logs` over a batch handed over in chunks, in memory that does not grow
    with the batch: each chunk's accepted and quarantined rows are appended to
    `directory`/accepted.parquet and quarantine.parquet as soon as they are judged. The
    verdicts are those of one `validate_logs` over the whole batch: an event id met in
    an earlier chunk makes a duplicate, and one clock judges every chunk.
    `progress(rows, accepted, quarantined)` is told after each chunk."""
    now = now or datetime.now(UTC)
    earlier = EarlierIds()

    def seen(ids: list[str]) -> Collection[str]:
        before = seen_event_ids(ids) if callable(seen_event_ids) else \
            [i for i in ids if i in seen_event_ids]
        return earlier.find(ids).union(before)

    directory.mkdir(parents=True, exist_ok=True)
    accepted_file = directory / "accepted.parquet"
    quarantine_file = directory / "quarantine.parquet"
    rows = accepted = quarantined = clicks = 0
    counts: Counter[str] = Counter()
    outcomes: list[SuiteOutcome] = []
    with pq.ParquetWriter(accepted_file, ACCEPTED_SCHEMA) as accepted_out, \
            pq.ParquetWriter(quarantine_file, QUARANTINE_SCHEMA) as quarantine_out:
        for chunk in chunks:
            if not len(chunk):
                continue
            result = validate_logs(chunk, known_doc_ids, seen, max_query_chars=max_query_chars,
                                   max_position=max_position, now=now)
            assert result.event_ids is not None
            earlier.add(result.event_ids)
            accepted_out.write_table(_as_table(result.accepted, ACCEPTED_SCHEMA))
            quarantine_out.write_table(_as_table(result.quarantined, QUARANTINE_SCHEMA))
            rows += result.input_rows
            accepted += result.accepted_count
            quarantined += result.quarantined_count
            clicks += result.accepted_clicks
            counts.update(result.reason_counts)
            outcomes.append(result.outcome)
            if progress:
                progress(rows, accepted, quarantined)
    return LogValidation(
        input_rows=rows, accepted_count=accepted, quarantined_count=quarantined,
        accepted_clicks=clicks, outcome=merged_outcome(outcomes, rows),
        reason_counts=dict(counts.most_common()), accepted_file=accepted_file,
        quarantine_file=quarantine_file)


def first_of_each_reason(quarantine_file: Path) -> dict[str, dict[str, Any]]:
    """reason code -> its first quarantined row (source, line, reason), read a part of
    the file at a time: an example of each reason for a report, whatever the file's size."""
    first: dict[str, dict[str, Any]] = {}
    parts = pq.ParquetFile(quarantine_file).iter_batches(
        batch_size=65_536, columns=["reason_code", "source", "line", "reason"])
    for part in parts:
        codes = part.column("reason_code")
        for code in pc.unique(codes).to_pylist():
            if code not in first:
                at = pc.index(codes, code).as_py()
                first[code] = {name: part.column(name)[at].as_py() for name in part.schema.names}
    return first


def _as_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    # safe=False: a timestamp parsed to nanoseconds is kept to the microsecond
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False, safe=False)


def merged_outcome(outcomes: list[SuiteOutcome], rows: int) -> SuiteOutcome:
    """One suite outcome for a batch validated in chunks: rows counted over all of them;
    `failures` keeps each chunk's codes and reasons, without row labels (they were
    positions within a chunk)."""
    if len(outcomes) == 1:
        return outcomes[0]
    if not outcomes:
        return SuiteOutcome(suite="interaction_log", success=True, failures=[],
                            result={"success": True, "rows": 0, "results": []})
    results = [dict(r) for r in outcomes[0].result["results"]]
    for outcome in outcomes[1:]:
        for total, more in zip(results, outcome.result["results"], strict=True):
            total["rows_checked"] += more["rows_checked"]
            total["rows_failing"] += more["rows_failing"]
            total["success"] = total.get("success", True) and more.get("success", True)
    failures = {code: (code, reason, []) for o in outcomes for code, reason, _ in o.failures}
    success = all(o.success for o in outcomes)
    return SuiteOutcome(suite=outcomes[0].suite, success=success,
                        failures=list(failures.values()),
                        result={**outcomes[0].result, "success": success, "rows": rows,
                                "chunks": len(outcomes), "results": results})


def _quarantine_frame(raw: pd.DataFrame, rows: list[int],
                      reasons: dict[int, list[tuple[str, str]]]) -> pd.DataFrame:
    records = raw.iloc[rows].to_dict("records")  # raw has a 0..n-1 index
    return pd.DataFrame({
        "event_id": [None if is_missing(r["event_id"]) else str(r["event_id"]) for r in records],
        "source": [r["source"] for r in records],
        "line": [int(r["line"]) for r in records],
        "reason_code": [reasons[i][0][0] for i in rows],
        "reason": ["; ".join(r for _, r in reasons[i]) for i in rows],
        "raw": [_raw_json(r) for r in records],
    }, columns=["event_id", "source", "line", "reason_code", "reason", "raw"])


def quarantine_whole_batch(validation: LogValidation, why: str,
                           chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
    """A rejected batch goes to quarantine whole, in parts: rows keep their own reasons,
    the rows that passed get the batch-level reason, as their validated values (ts in
    ISO 8601). Nothing is dropped."""
    if validation.quarantine_file is None:
        yield validation.quarantined
    else:
        for batch in pq.ParquetFile(validation.quarantine_file).iter_batches(chunk_rows):
            yield batch.to_pandas()
    if validation.accepted_file is None:
        parts: Iterable[pd.DataFrame] = [validation.accepted]
    else:
        parts = (b.to_pandas() for b in
                 pq.ParquetFile(validation.accepted_file).iter_batches(chunk_rows))
    for passed in parts:
        records = passed.to_dict("records")
        yield pd.DataFrame({
            "event_id": [r["event_id"] for r in records],
            "source": [r["source"] for r in records],
            "line": [int(r["line"]) for r in records],
            "reason_code": "batch_rejected", "reason": f"batch rejected: {why}",
            "raw": [_raw_json(_as_logged(r)) for r in records],
        }, columns=QUARANTINE_SCHEMA.names)


def _as_logged(record: dict[str, Any]) -> dict[str, Any]:
    """A validated row's values as a log line would hold them."""
    out = {f: (None if is_missing(record.get(f)) else record.get(f)) for f in LOG_FIELDS}
    out["ts"] = record["ts"].isoformat().replace("+00:00", "Z")
    out["position"] = int(record["position"])
    if out["dwell_ms"] is not None and float(out["dwell_ms"]).is_integer():
        out["dwell_ms"] = int(out["dwell_ms"])
    return out


def write_rows(parts: Iterable[pd.DataFrame], path: Path, schema: pa.Schema) -> int:
    """Rows from `parts` into one Parquet file, part by part; how many were written."""
    written = 0
    with pq.ParquetWriter(path, schema) as out:
        for part in parts:
            out.write_table(_as_table(part, schema))
            written += len(part)
    return written


def check_batch(validation: LogValidation, *, max_quarantine_share: float,
                min_clicks: int) -> BatchVerdict:
    """Batch-level expectations over the batch summary: may this batch be trained on?"""
    summary = pd.DataFrame({"quarantined_share": [validation.quarantined_share],
                            "accepted_clicks": [validation.accepted_clicks]})
    outcome = run_suite(summary, load_suite_json("interaction_batch"),
                        {"max_quarantine_share": max_quarantine_share, "min_clicks": min_clicks})
    problems = []
    for code, _, _ in outcome.failures:
        if code == "too_many_quarantined":
            problems.append(
                f"{validation.quarantined_count} of {validation.input_rows} rows "
                f"({validation.quarantined_share:.0%}) are malformed, above the "
                f"{max_quarantine_share:.0%} limit (top reasons: "
                f"{_top_reasons(validation.reason_counts)})")
        elif code == "too_few_clicks":
            problems.append(f"only {validation.accepted_clicks} valid clicks, fewer than the "
                            f"{min_clicks} needed to train")
    return BatchVerdict(ok=not problems, problems=problems, outcome=outcome)


def _top_reasons(counts: dict[str, int], n: int = 3) -> str:
    return ", ".join(f"{code} {count}" for code, count in list(counts.items())[:n]) or "none"


def validate_corpus(corpus: pd.DataFrame) -> SuiteOutcome:
    frame = pd.DataFrame({"doc_id": corpus["doc_id"],
                          "content": (corpus["title"].fillna("") + " "
                                      + corpus["text"].fillna(""))})
    return run_suite(frame, load_suite_json("corpus"))
