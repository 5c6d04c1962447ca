from __future__ import annotations

import pandas as pd

from embedloop.pairs import build_training_data, normalize_query, split_queries_by_time


def clicks(rows: list[tuple[str, str, str, bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"event_id": f"e{i}", "ts": pd.Timestamp(ts, tz="UTC"), "query": q,
                          "doc_id": d, "clicked": c} for i, (ts, q, d, c) in enumerate(rows)])


def test_most_recent_queries_are_held_out_and_never_trained_on() -> None:
    accepted = clicks([
        ("2026-01-01", "old query", "d1", True),
        ("2026-01-02", "middle query", "d2", True),
        ("2026-01-03", "new query", "d3", True),
        ("2026-01-04", "Old  Query", "d4", True),   # the old query, asked again, most recently
        ("2026-01-04", "unclicked", "d5", False),
    ])
    data = build_training_data(accepted, {f"d{i}": f"text {i}" for i in range(6)},
                               holdout_fraction=0.34, min_holdout=1)
    assert data.eval_qrels == {"old query": {"d1": 1, "d4": 1}}
    assert set(data.pairs["anchor"]) == {"middle query", "new query"}
    assert "old query" not in {normalize_query(q) for q in data.pairs["query"]}


def test_pairs_are_distinct_and_carry_document_text() -> None:
    accepted = clicks([
        ("2026-01-01", "q a", "d1", True), ("2026-01-02", "q a", "d1", True),
        ("2026-01-02", "q a", "d2", True), ("2026-01-03", "q b", "d2", False),
        ("2026-01-05", "q c", "d3", True), ("2026-01-06", "q d", "d3", True),
    ])
    data = build_training_data(accepted, {"d1": "one", "d2": "two", "d3": "three"},
                               holdout_fraction=0.0, min_holdout=1)
    pairs = data.pairs.set_index(["query", "doc_id"])
    assert pairs.loc[("q a", "d1"), "clicks"] == 2  # two clicks, one pair
    assert pairs.loc[("q a", "d2"), "positive"] == "two"
    assert ("q b", "d2") not in pairs.index  # shown but not clicked: not a positive
    assert data.eval_queries == 1 and data.train_queries == 2


def test_split_keeps_at_least_half_for_training() -> None:
    frame = pd.DataFrame({"qkey": list("abcd"), "ts": pd.date_range("2026-01-01", periods=4)})
    train, held = split_queries_by_time(frame, holdout_fraction=0.9, min_holdout=10)
    assert held == {"c", "d"} and train == {"a", "b"}
