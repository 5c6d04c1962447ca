"""Clicks -> training pairs and a time-based held-out evaluation set. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class TrainingData:
    pairs: pd.DataFrame  # query, doc_id, anchor, positive, clicks
    eval_qrels: dict[str, dict[str, int]]  # query text -> {doc_id: relevance}
    train_queries: int
    eval_queries: int


def normalize_query(text: str) -> str:
    """Queries that differ only in case or spacing are the same query."""
    return " ".join(text.split()).casefold()


def split_queries_by_time(clicks: pd.DataFrame, holdout_fraction: float,
                          min_holdout: int) -> tuple[set[str], set[str]]:
    """Hold out the queries seen most recently (by their last click), so the gate
    measures the model on what users ask now, never on what it was trained on.
    Returns (train, held-out) sets of normalized queries."""
    last_seen = clicks.groupby("qkey")["ts"].max().sort_values(kind="stable")
    n = len(last_seen)
    if n < 2:
        return set(last_seen.index), set()
    n_eval = max(min_holdout, math.ceil(holdout_fraction * n))
    n_eval = min(n_eval, n // 2)  # always leave at least half for training
    ordered = list(last_seen.index)
    return set(ordered[: n - n_eval]), set(ordered[n - n_eval:])


def build_training_data(accepted: pd.DataFrame, doc_texts: dict[str, str],
                        holdout_fraction: float, min_holdout: int,
                        never_train: set[str] | None = None) -> TrainingData:
    """One (query, clicked document) pair per distinct click, for in-batch-negative
    training; held-out queries and all their clicks go to evaluation only, and queries
    in `never_train` (the guard set) are used for nothing."""
    clicks = accepted[accepted["clicked"] == True].copy()  # noqa: E712 - object column
    clicks["qkey"] = clicks["query"].map(normalize_query)
    if never_train:
        clicks = clicks[~clicks["qkey"].isin({normalize_query(q) for q in never_train})]
    train_keys, eval_keys = split_queries_by_time(clicks, holdout_fraction, min_holdout)

    train = clicks[clicks["qkey"].isin(train_keys)]
    pairs = (train.groupby(["qkey", "doc_id"], sort=True)
             .agg(query=("query", "first"), clicks=("event_id", "size"))
             .reset_index())
    pairs["anchor"] = pairs["query"].str.strip()
    pairs["positive"] = pairs["doc_id"].map(doc_texts)
    pairs = pairs[["query", "doc_id", "anchor", "positive", "clicks"]]

    held = clicks[clicks["qkey"].isin(eval_keys)]
    eval_qrels: dict[str, dict[str, int]] = {}
    for _, group in held.groupby("qkey", sort=True):
        query = group["query"].iloc[0].strip()
        eval_qrels[query] = {doc_id: 1 for doc_id in sorted(set(group["doc_id"]))}
    return TrainingData(pairs=pairs, eval_qrels=eval_qrels, train_queries=len(train_keys),
                        eval_queries=len(eval_qrels))
