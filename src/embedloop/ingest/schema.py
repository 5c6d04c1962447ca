"""The interaction-log schema: the fields of one row (the contract of
../shared/benchmarks/simulate_clicks.py), and how a raw value becomes a typed one.

A value of the wrong type becomes null in its typed column and is named in
`type_errors`, which validation turns into the row's quarantine reason: typing never
drops a row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

# dwell_ms and team are optional. team: which ranker placed the result, when the service
# showed an interleaved list of two (interleaving.py); copied into the log by the front end.
LOG_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked", "dwell_ms",
              "team")
REQUIRED_FIELDS = ("event_id", "ts", "session_id", "query", "doc_id", "position", "clicked")
# What a reader hands on: the fields' raw values, where each row came from, and why a
# line could not even be parsed (None when it could).
FRAME_COLUMNS = [*LOG_FIELDS, "source", "line", "parse_error"]


def is_missing(value: object) -> bool:
    """None/NaN/NaT, without pd.isna's element-wise answer for a list or dict value."""
    if value is None or type(value) is str:  # the common cases, a hundred times faster
        return value is None
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))



def _as_id(value: Any) -> tuple[str | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"not a string ({type(value).__name__})"


def _as_text(value: Any) -> tuple[str | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, str):
        return value, None
    return None, f"not a string ({type(value).__name__})"


# str.isdigit() accepts "²" and other digits int() refuses: only ASCII counts here.
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_position(value: Any) -> tuple[float | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not an integer (bool)"
    if isinstance(value, int):
        return _to_float(value), None
    if isinstance(value, float) and value.is_integer():
        return value, None
    if isinstance(value, str) and ASCII_INTEGER.fullmatch(value.strip()):
        return float(value), None  # not int(): it refuses more than 4300 digits
    return None, f"not an integer ({_short(value)})"


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _as_clicked(value: Any) -> tuple[bool | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE, None
    return None, f"not a boolean ({_short(value)})"


def _as_number(value: Any) -> tuple[float | None, str | None]:
    if is_missing(value):
        return None, None
    if isinstance(value, bool):
        return None, "not a number (bool)"
    if isinstance(value, int | float):
        return _to_float(value), None
    if isinstance(value, str):
        try:
            return float(value), None
        except ValueError:
            pass
    return None, f"not a number ({_short(value)})"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_timestamps(values: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """ISO-8601 strings or datetimes -> UTC timestamps; naive times are taken as UTC."""
    present = values.notna().to_numpy()
    errors: dict[int, str] = {}
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        usable = np.isin(_types(values), (str, pd.Timestamp))
        for i in np.flatnonzero(~usable & present):
            if not hasattr(values.iat[i], "isoformat"):  # datetime.datetime, datetime.date
                errors[int(i)] = f"not a timestamp ({type(values.iat[i]).__name__})"
    cleaned = values.where(present, None).astype(object)
    if errors:
        cleaned.iloc[list(errors)] = None
    # cache=False: the cache pays off for repeated values; log timestamps rarely repeat
    parsed = pd.to_datetime(cleaned, utc=True, format="ISO8601", errors="coerce", cache=False)
    for i in np.flatnonzero(parsed.isna().to_numpy() & cleaned.notna().to_numpy()):
        errors[int(i)] = f"not an ISO-8601 timestamp ({_short(cleaned.iat[i])})"
    return parsed, errors


def _types(values: pd.Series) -> np.ndarray:
    """Each value's type (Series.map(type) takes twice as long)."""
    return np.fromiter(map(type, values.to_numpy()), dtype=object, count=len(values))


Converter = Callable[[Any], tuple[Any, str | None]]


def _typed_column(raw: pd.Series, convert: Converter, fast_types: tuple[type, ...] = (),
                  cast: Callable[[pd.Series], Any] = lambda s: s.to_numpy(),
                  from_text: Callable[[pd.Series], tuple[pd.Series, pd.Series]] | None = None,
                  ) -> tuple[np.ndarray, dict[int, str]]:
    """`convert` applied to every value, with the common cases done column-wise: values of
    `fast_types` go through `cast`, strings through `from_text` (values, parsed-ok mask).
    Everything else, and every string `from_text` could not parse, goes to `convert`,
    which is the definition of what a value means."""
    out = np.full(len(raw), None, dtype=object)
    pending = raw.notna().to_numpy().copy()
    inferred = _INFERRED.get(pd.api.types.infer_dtype(raw, skipna=True))
    if inferred and set(inferred) <= set(fast_types):
        # Every non-null value is of a fast type (the usual column): no per-value look.
        types = None
        fast = pending.copy()
    else:
        types = _types(raw)
        fast = (np.isin(types, fast_types) & pending if fast_types
                else np.zeros(len(raw), bool))
    if fast.any():
        out[fast] = cast(raw[fast])
        pending &= ~fast
    if from_text is not None and types is not None:
        text = np.isin(types, (str,)) & pending
        if text.any():
            values, ok = from_text(raw[text].astype(str))
            ok = ok.to_numpy(dtype=bool)
            rows = np.flatnonzero(text)[ok]
            out[rows] = values.to_numpy()[ok]
            pending[rows] = False
    errors: dict[int, str] = {}
    for i in np.flatnonzero(pending):
        out[i], problem = convert(raw.iat[i])
        if problem:
            errors[int(i)] = problem
    return out, errors


# pandas' C-level type inference (skipping nulls) -> the fast types it guarantees.
_INFERRED: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "boolean": (bool,), "floating": (float,),
    "mixed-integer-float": (int, float)}


def _floats(values: pd.Series) -> np.ndarray:
    """Python ints/floats -> float64; an int too large for a float becomes inf (and then
    fails the range checks) instead of raising OverflowError."""
    try:
        return values.to_numpy(dtype=np.float64)
    except OverflowError:
        return np.array([_to_float(v) for v in values], dtype=np.float64)


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _position_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    ok = text.str.fullmatch(r"\s*[+-]?[0-9]+\s*", flags=re.ASCII)
    return text.where(ok, "nan").astype(float), ok


def _clicked_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    word = text.str.strip().str.lower()
    return word.isin(_TRUE).astype(object), word.isin(_TRUE | _FALSE)


def _number_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(text, errors="coerce")
    return values, values.notna()


def to_typed_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows -> typed columns, plus `type_errors` (None, or '; '-joined messages) and
    `bad_fields` (the fields named there; 'row' when the line was not a JSON object).
    An optional field a frame lacks altogether is null in every row."""
    raw = raw.reindex(columns=list(dict.fromkeys([*FRAME_COLUMNS, *raw.columns])))
    columns = {
        "event_id": _typed_column(raw["event_id"], _as_id, (str,)),
        "session_id": _typed_column(raw["session_id"], _as_id, (str,)),
        "doc_id": _typed_column(raw["doc_id"], _as_id, (str,)),
        "query": _typed_column(raw["query"], _as_text, (str,)),
        "position": _typed_column(raw["position"], _as_position, (int,), _floats,
                                  _position_text),
        "clicked": _typed_column(raw["clicked"], _as_clicked, (bool,), from_text=_clicked_text),
        "dwell_ms": _typed_column(raw["dwell_ms"], _as_number, (int, float), _floats,
                                  _number_text),
        "team": _typed_column(raw["team"], _as_text, (str,)),
    }
    ts, ts_errors = _parse_timestamps(raw["ts"].reset_index(drop=True))
    problems: dict[int, list[tuple[str, str]]] = {}
    for i, parse_error in enumerate(raw["parse_error"]):
        if isinstance(parse_error, str):
            problems[i] = [("row", parse_error)]
    for name, (_, errors) in columns.items():
        if name == "position":  # keep the contract's field order in messages
            for i, problem in ts_errors.items():
                problems.setdefault(i, []).append(("ts", problem))
        for i, problem in errors.items():
            problems.setdefault(i, []).append((name, problem))

    typed = pd.DataFrame({name: values for name, (values, _) in columns.items()},
                         index=raw.index, dtype=object)
    typed["position"] = pd.to_numeric(typed["position"], errors="coerce").astype("float64")
    typed["dwell_ms"] = pd.to_numeric(typed["dwell_ms"], errors="coerce").astype("float64")
    typed["ts"] = pd.Series(ts.array, index=raw.index)
    typed["ts_epoch"] = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    type_errors = np.full(len(raw), None, dtype=object)
    bad_fields = np.full(len(raw), frozenset(), dtype=object)
    for i, found in problems.items():
        type_errors[i] = "; ".join(f"{f}: {m}" for f, m in found)
        bad_fields[i] = frozenset(f for f, _ in found)
    typed["type_errors"] = pd.Series(type_errors, index=raw.index, dtype=object)
    typed["bad_fields"] = pd.Series(bad_fields, index=raw.index, dtype=object)
    typed["source"] = raw["source"].to_numpy()
    typed["line"] = raw["line"].to_numpy()
    return typed
