"""Clicks -> training pairs and a time-based held-out evaluation set. Pure functions.

Clicks are biased (users click what is shown high) and noisy (users click what is not
relevant). A position-based click model fitted on every impression seen so far gives
each (query, document) pair a debiased relevance; pairs below `min_relevance` are not
trusted as positives or as evaluation labels. A document the model says users examined
and skipped becomes that query's hard negative, unless it was ever clicked for it
(false-negative filtering). Earlier batches' pairs are replayed in part so a cycle does
not forget the last.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embedloop.clickmodel import ClickModel, fit_position_based_model

# A negative must look clearly irrelevant to the click model.
MAX_NEGATIVE_RELEVANCE = 0.2


@dataclass(frozen=True)
class TrainingData:
    pairs: pd.DataFrame  # query, doc_id, anchor, positive, [negative], clicks, relevance
    eval_qrels: dict[str, dict[str, int]]  # query text -> {doc_id: relevance}
    train_queries: int
    eval_queries: int
    replayed: int = 0
    dropped_as_noise: int = 0
    examination: dict[int, float] = field(default_factory=dict)  # estimated propensities


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


def _with_qkey(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["qkey"] = out["query"].map(normalize_query)
    return out


def _click_pairs(clicks: pd.DataFrame) -> pd.DataFrame:
    return (clicks.groupby(["qkey", "doc_id"], sort=True)
            .agg(query=("query", "first"), clicks=("event_id", "size")).reset_index())


def _hard_negatives(impressions: pd.DataFrame, model: ClickModel) -> dict[str, str]:
    """Per query: the shown document most likely examined and skipped, never clicked."""
    rel = model.relevance.set_index(["qkey", "doc_id"])
    ever_clicked = set(zip(impressions.loc[impressions["clicked"] == True, "qkey"],  # noqa: E712
                           impressions.loc[impressions["clicked"] == True, "doc_id"],  # noqa: E712
                           strict=True))
    shown = impressions[["qkey", "doc_id", "position"]].copy()
    shown["examined"] = shown["position"].astype(int).map(model.examination).fillna(0.0)
    shown = shown.groupby(["qkey", "doc_id"], sort=True)["examined"].max().reset_index()
    shown["gamma"] = [rel.at[(q, d), "gamma"] for q, d in zip(shown["qkey"], shown["doc_id"],
                                                              strict=True)]
    keep = [(q, d) not in ever_clicked for q, d in zip(shown["qkey"], shown["doc_id"],
                                                       strict=True)]
    shown = shown[np.array(keep, dtype=bool) & (shown["gamma"] <= MAX_NEGATIVE_RELEVANCE)]
    best = shown.sort_values(["qkey", "examined", "doc_id"], ascending=[True, False, True])
    return dict(best.groupby("qkey", sort=True)["doc_id"].first())


def build_training_data(accepted: pd.DataFrame, doc_texts: dict[str, str],
                        holdout_fraction: float, min_holdout: int,
                        never_train: set[str] | None = None, *,
                        history: pd.DataFrame | None = None, min_relevance: float = 0.0,
                        hard_negatives: bool = False, replay_fraction: float = 0.0,
                        seed: int = 0) -> TrainingData:
    """Pairs from this batch's clicks (plus replayed earlier ones) for in-batch-negative
    training; held-out queries and all their clicks go to evaluation only, and queries
    in `never_train` (the guard set) are used for nothing.

    Args:
        accepted: this batch's validated rows.
        history: earlier batches' accepted rows (click-model evidence and replay).
        min_relevance: debiased relevance a clicked pair needs (0 keeps every click).
        hard_negatives: add a `negative` column (examined-and-skipped documents).
        replay_fraction: share of earlier batches' pairs to train on again.
    """
    current = _with_qkey(accepted)
    earlier = _with_qkey(history) if history is not None and len(history) else current.iloc[:0]
    if never_train:
        excluded = {normalize_query(q) for q in never_train}
        current = current[~current["qkey"].isin(excluded)]
        earlier = earlier[~earlier["qkey"].isin(excluded)]
    clicks = current[current["clicked"] == True]  # noqa: E712 - object column
    train_keys, eval_keys = split_queries_by_time(clicks, holdout_fraction, min_holdout)

    everything = pd.concat([earlier, current], ignore_index=True)
    model = None
    if min_relevance > 0 or hard_negatives:
        model = fit_position_based_model(everything.dropna(subset=["position"]))
        gamma = model.relevance.set_index(["qkey", "doc_id"])["gamma"]

    def trusted(pairs: pd.DataFrame) -> pd.DataFrame:
        if model is None:
            return pairs.assign(relevance=float("nan"))
        pairs = pairs.assign(relevance=[float(gamma.get((q, d), 0.0)) for q, d in
                                        zip(pairs["qkey"], pairs["doc_id"], strict=True)])
        return pairs[pairs["relevance"] >= min_relevance]

    fresh = _click_pairs(clicks[clicks["qkey"].isin(train_keys)])
    kept = trusted(fresh)
    dropped = len(fresh) - len(kept)
    old_clicks = earlier[(earlier["clicked"] == True)  # noqa: E712
                         & ~earlier["qkey"].isin(eval_keys)]
    old = trusted(_click_pairs(old_clicks))
    old = old[~old.set_index(["qkey", "doc_id"]).index.isin(
        kept.set_index(["qkey", "doc_id"]).index)]
    replay = old.sample(n=min(len(old), round(replay_fraction * len(old))),
                        random_state=seed) if replay_fraction > 0 and len(old) else old.iloc[:0]
    pairs = pd.concat([kept, replay], ignore_index=True).sort_values(["qkey", "doc_id"])
    pairs["anchor"] = pairs["query"].str.strip()
    pairs["positive"] = pairs["doc_id"].map(doc_texts)
    columns = ["query", "doc_id", "anchor", "positive", "clicks", "relevance"]
    if hard_negatives and model is not None:
        shown = everything.dropna(subset=["position"])
        negatives = _hard_negatives(shown, model)
        clicked_for: dict[str, set[str]] = {}
        for q, d in zip(shown.loc[shown["clicked"] == True, "qkey"],  # noqa: E712
                        shown.loc[shown["clicked"] == True, "doc_id"], strict=True):  # noqa: E712
            clicked_for.setdefault(q, set()).add(d)
        rng = random.Random(seed)
        all_docs = sorted(doc_texts)

        def random_negative(qkey: str) -> str:
            # No document was confidently examined and skipped: a random one is a weak
            # negative, but never one that users clicked for this query.
            for _ in range(100):
                doc = rng.choice(all_docs)
                if doc not in clicked_for.get(qkey, set()):
                    return doc
            return rng.choice(all_docs)  # a tiny corpus where every document was clicked

        pairs["negative"] = [doc_texts[negatives.get(q) or random_negative(q)]
                             for q in pairs["qkey"]]
        columns.insert(4, "negative")
    pairs = pairs.reset_index(drop=True)[columns]

    held = clicks[clicks["qkey"].isin(eval_keys)]
    eval_qrels: dict[str, dict[str, int]] = {}
    for qkey, group in held.groupby("qkey", sort=True):
        docs = sorted(set(group["doc_id"]))
        if model is not None:  # noisy clicks are not relevance labels either
            docs = [d for d in docs if float(gamma.get((qkey, d), 0.0)) >= min_relevance]
        if docs:
            eval_qrels[group["query"].iloc[0].strip()] = {d: 1 for d in docs}
    return TrainingData(pairs=pairs, eval_qrels=eval_qrels, train_queries=len(train_keys),
                        eval_queries=len(eval_qrels), replayed=len(replay),
                        dropped_as_noise=dropped,
                        examination=model.examination if model else {})
