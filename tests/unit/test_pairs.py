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


def impressions(sessions: list[tuple[str, str, list[str], set[str]]]) -> pd.DataFrame:
    """(ts, query, shown documents in order, clicked documents) -> log rows."""
    rows = []
    for s, (ts, query, shown, clicked) in enumerate(sessions):
        for position, doc in enumerate(shown, start=1):
            rows.append({"event_id": f"e{s}-{position}", "ts": pd.Timestamp(ts, tz="UTC"),
                         "query": query, "doc_id": doc, "position": position,
                         "clicked": doc in clicked})
    return pd.DataFrame(rows)


def test_click_model_drops_noise_clicks_and_picks_skipped_negatives() -> None:
    sessions = []
    for day in range(1, 9):  # the ranker's order varies a little from day to day
        odd = day % 2
        sessions.append((f"2026-01-0{day}", "good query",
                         ["d1", "d2", "d3", "d4"] if odd else ["d2", "d1", "d4", "d3"], {"d2"}))
        sessions.append((f"2026-01-0{day}", "other query",
                         ["d3", "d4", "d1", "d2"] if odd else ["d4", "d3", "d2", "d1"],
                         {"d3", "d4"} if day == 1 else {"d3"}))  # one stray click on d4
    sessions.append(("2026-01-09", "late query", ["d1", "d2", "d3", "d4"], {"d1"}))
    accepted = impressions(sessions)
    texts = {d: f"text {d}" for d in ("d1", "d2", "d3", "d4")}
    data = build_training_data(accepted, texts, holdout_fraction=0.3, min_holdout=1,
                               min_relevance=0.5, hard_negatives=True)
    assert set(zip(data.pairs["anchor"], data.pairs["doc_id"], strict=True)) == {
        ("good query", "d2"), ("other query", "d3")}
    assert data.dropped_as_noise == 1  # the stray click on d4
    negatives = dict(zip(data.pairs["anchor"], data.pairs["negative"], strict=True))
    # d1 sits at the top half the time and is never clicked: examined and skipped
    assert negatives["good query"] == "text d1"
    # the other query's skipped documents sat low (rarely examined: no evidence), so its
    # negative is random, but never d4 or d3, which users clicked for it
    assert negatives["other query"] in {"text d1", "text d2"}
    assert data.examination[1] == 1.0 and data.examination[4] < 1.0
    assert list(data.eval_qrels) == ["late query"]


def test_replay_trains_again_on_part_of_earlier_batches() -> None:
    shown = ["d1", "d2"]
    history = impressions([("2026-01-01", f"old {i}", shown, {"d1"}) for i in range(10)])
    current = impressions([(f"2026-02-0{i + 1}", f"new {i}", shown, {"d2"}) for i in range(4)])
    data = build_training_data(current, {"d1": "a", "d2": "b"}, holdout_fraction=0.25,
                               min_holdout=1, history=history, replay_fraction=0.5)
    assert data.replayed == 5
    assert sum(a.startswith("old") for a in data.pairs["anchor"]) == 5
    assert sum(a.startswith("new") for a in data.pairs["anchor"]) == 3
    assert list(data.eval_qrels) == ["new 3"]
