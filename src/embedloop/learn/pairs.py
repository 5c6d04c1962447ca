"""Clicks -> training pairs and the evaluation pool. Pure functions.

Clicks are biased (users click what is shown high) and noisy (users click what is not
relevant). A position-based click model fitted on every impression seen so far gives
each (query, document) pair a debiased relevance; pairs below `min_relevance` are not
trusted as positives or as evaluation labels. A document the model says users examined
and skipped becomes that query's hard negative, unless it was ever clicked for it
(false-negative filtering). Earlier batches' pairs are replayed in part so a cycle does
not forget the last.

The evaluation pool: a stable share of all queries, chosen by a hash of the normalized
query, is never trained on. A query in the pool stays in it forever, so the pool grows
with every batch and its labels, read through the click model from all history so far,
sharpen as users ask the same queries again. Every decision is judged on the whole pool.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from embedloop.learn.clickmodel import ClickModel, fit_position_based_model

# A negative must look clearly irrelevant to the click model.
MAX_NEGATIVE_RELEVANCE = 0.2


@dataclass(frozen=True)
class TrainingData:
    # qkey, query, doc_id, anchor, positive, [negative, negative_id], clicks, relevance
    pairs: pd.DataFrame
    eval_qrels: dict[str, dict[str, float]]  # the pool: query text -> {doc_id: gain}
    train_queries: int
    eval_queries: int
    # pool queries clicked in this batch: what users ask now (drift shows here first)
    recent_qrels: dict[str, dict[str, float]] = field(default_factory=dict)
    pool_new: int = 0  # pool queries first seen in this batch
    replayed: int = 0
    dropped_as_noise: int = 0
    examination: dict[int, float] = field(default_factory=dict)  # estimated propensities
    # query key -> every document users clicked for it (no such document is a negative)
    clicked_for: dict[str, set[str]] = field(default_factory=dict)
    # query key -> every document users were shown for it, for the pool's and the guard
    # set's queries: what their click labels can speak about (evaluation.condensed)
    shown: dict[str, set[str]] = field(default_factory=dict)
    # the tune queries (training queries never trained on) and their click labels, by
    # query text: what the recipe chooses its mixing weight on
    tune_qrels: dict[str, dict[str, float]] = field(default_factory=dict)

    def shown_for(self, qrels: dict[str, dict[str, float]]) -> dict[str, set[str]]:
        """`shown`, keyed like `qrels` (by query text)."""
        return {q: self.shown.get(normalize_query(q), set()) for q in qrels}


def normalize_query(text: str) -> str:
    """Queries that differ only in case, spacing or character width are the same query:
    NFKC makes full-width Latin and digits ("ＡＢＣ１２") and half-width katakana the
    usual forms, and the ideographic space a space. Only the key: what users typed is
    what training and evaluation see."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def in_eval_pool(qkey: str, fraction: float) -> bool:
    """Stable: the same normalized query lands on the same side on every run and every
    machine (a hash of its text, not Python's salted hash())."""
    digest = hashlib.sha256(qkey.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def in_tune_split(qkey: str, fraction: float) -> bool:
    """Stable like `in_eval_pool`, and independent of it: the hash's next 8 bytes."""
    digest = hashlib.sha256(qkey.encode("utf-8")).digest()
    return int.from_bytes(digest[8:16], "big") / 2**64 < fraction


def _with_qkey(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["qkey"] = out["query"].map(normalize_query)
    return out


def _click_pairs(clicks: pd.DataFrame) -> pd.DataFrame:
    return (clicks.groupby(["qkey", "doc_id"], sort=True)
            .agg(query=("query", "first"), clicks=("event_id", "size")).reset_index())


def _hard_negatives(impressions: pd.DataFrame, model: ClickModel,
                    clicked_for: dict[str, set[str]]) -> dict[str, str]:
    """Per query: the shown document most likely examined and skipped, never clicked."""
    rel = model.relevance.set_index(["qkey", "doc_id"])
    shown = impressions[["qkey", "doc_id", "position"]].copy()
    shown["examined"] = shown["position"].astype(int).map(model.examination).fillna(0.0)
    shown = shown.groupby(["qkey", "doc_id"], sort=True)["examined"].max().reset_index()
    shown["gamma"] = [rel.at[(q, d), "gamma"] for q, d in zip(shown["qkey"], shown["doc_id"],
                                                              strict=True)]
    keep = [d not in clicked_for.get(q, ()) for q, d in zip(shown["qkey"], shown["doc_id"],
                                                            strict=True)]
    shown = shown[np.array(keep, dtype=bool) & (shown["gamma"] <= MAX_NEGATIVE_RELEVANCE)]
    best = shown.sort_values(["qkey", "examined", "doc_id"], ascending=[True, False, True])
    return dict(best.groupby("qkey", sort=True)["doc_id"].first())


def pool_labels(clicks: pd.DataFrame, gamma: pd.Series | None, min_relevance: float,
                graded: bool) -> dict[str, dict[str, float]]:
    """Relevance labels for pool queries from their clicks: every clicked document the
    click model trusts, with its debiased relevance as the gain (graded) or 1 (binary).
    Keyed by the query's first-seen text."""
    qrels: dict[str, dict[str, float]] = {}
    for qkey, group in clicks.groupby("qkey", sort=True):
        labels: dict[str, float] = {}
        for doc in sorted(set(group["doc_id"])):
            relevance = 1.0 if gamma is None else float(gamma.get((qkey, doc), 0.0))
            if relevance >= min_relevance:  # noisy clicks are not relevance labels either
                labels[doc] = round(relevance, 4) if graded and gamma is not None else 1.0
        if labels:
            qrels[group["query"].iloc[0].strip()] = labels
    return qrels


def build_training_data(accepted: pd.DataFrame, doc_texts: dict[str, str],
                        pool_fraction: float, never_train: set[str] | None = None, *,
                        history: pd.DataFrame | None = None, min_relevance: float = 0.0,
                        graded_labels: bool = True, hard_negatives: bool = False,
                        replay_fraction: float = 0.0, tune_fraction: float = 0.0,
                        seed: int = 0) -> TrainingData:
    """Pairs from this batch's clicks (plus replayed earlier ones) for in-batch-negative
    training, and the evaluation pool's labels from all history. Pool queries (chosen by
    `in_eval_pool`) and queries in `never_train` (the guard set) are never trained on.

    Args:
        accepted: this batch's validated rows.
        pool_fraction: share of queries that belong to the evaluation pool.
        history: earlier batches' accepted rows (click-model evidence, pool labels, replay).
        min_relevance: debiased relevance a clicked pair needs (0 keeps every click).
        graded_labels: pool labels are the debiased relevance, not 1 per trusted click.
        hard_negatives: add a `negative` column (examined-and-skipped documents).
        replay_fraction: share of earlier batches' pairs to train on again.
        tune_fraction: share of the other queries kept out of training to tune the recipe
            on (`tune_qrels`), by a hash: a tune query stays one in every run.
    """
    current = _with_qkey(accepted)
    earlier = _with_qkey(history) if history is not None and len(history) else current.iloc[:0]
    everything = pd.concat([earlier, current], ignore_index=True)
    clicks = current[current["clicked"] == True]  # noqa: E712 - object column
    all_clicks = everything[everything["clicked"] == True]  # noqa: E712
    # a query never clicked gives no label and no pair: only clicked ones count
    pool_keys = {q for q in all_clicks["qkey"].unique() if in_eval_pool(q, pool_fraction)}
    judged = pool_keys | {normalize_query(q) for q in never_train or ()}
    tune_keys = {q for q in all_clicks["qkey"].unique()
                 if q not in judged and in_tune_split(q, tune_fraction)}
    banned = judged | tune_keys

    model = None
    gamma: pd.Series | None = None
    if min_relevance > 0 or hard_negatives or graded_labels:
        model = fit_position_based_model(everything.dropna(subset=["position"]))
        gamma = model.relevance.set_index(["qkey", "doc_id"])["gamma"]

    def trusted(pairs: pd.DataFrame) -> pd.DataFrame:
        if gamma is None:
            return pairs.assign(relevance=float("nan"))
        pairs = pairs.assign(relevance=[float(gamma.get((q, d), 0.0)) for q, d in
                                        zip(pairs["qkey"], pairs["doc_id"], strict=True)])
        return pairs[pairs["relevance"] >= min_relevance]

    train_clicks = clicks[~clicks["qkey"].isin(banned)]
    fresh = _click_pairs(train_clicks)
    kept = trusted(fresh)
    dropped = len(fresh) - len(kept)
    old_clicks = earlier[(earlier["clicked"] == True)  # noqa: E712
                         & ~earlier["qkey"].isin(banned)]
    old = trusted(_click_pairs(old_clicks))
    old = old[~old.set_index(["qkey", "doc_id"]).index.isin(
        kept.set_index(["qkey", "doc_id"]).index)]
    replay = old.sample(n=min(len(old), round(replay_fraction * len(old))),
                        random_state=seed) if replay_fraction > 0 and len(old) else old.iloc[:0]
    pairs = pd.concat([kept.assign(replayed=False), replay.assign(replayed=True)],
                      ignore_index=True).sort_values(["qkey", "doc_id"])
    pairs["anchor"] = pairs["query"].str.strip()
    pairs["positive"] = pairs["doc_id"].map(doc_texts)
    columns = ["query", "doc_id", "anchor", "positive", "clicks", "relevance", "replayed"]
    clicked_for: dict[str, set[str]] = {}
    for q, d in zip(all_clicks["qkey"], all_clicks["doc_id"], strict=True):
        clicked_for.setdefault(q, set()).add(d)
    if hard_negatives and model is not None:
        negatives = _hard_negatives(everything.dropna(subset=["position"]), model,
                                    clicked_for)
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

        pairs["negative_id"] = [negatives.get(q) or random_negative(q) for q in pairs["qkey"]]
        pairs["negative"] = pairs["negative_id"].map(doc_texts)
        columns[4:4] = ["negative", "negative_id"]
    pairs = pairs.reset_index(drop=True)[["qkey", *columns]]

    judged_keys = everything["qkey"].isin(banned)
    shown = {q: set(docs) for q, docs in
             everything.loc[judged_keys].groupby("qkey", sort=False)["doc_id"]}
    seen_before = set(earlier.loc[earlier["clicked"] == True, "qkey"])  # noqa: E712
    eval_qrels = pool_labels(all_clicks[all_clicks["qkey"].isin(pool_keys)], gamma,
                             min_relevance, graded_labels)
    tune_qrels = pool_labels(all_clicks[all_clicks["qkey"].isin(tune_keys)], gamma,
                             min_relevance, graded_labels)
    asked_now = set(clicks["qkey"])
    recent_qrels = {q: labels for q, labels in eval_qrels.items()
                    if normalize_query(q) in asked_now}
    return TrainingData(pairs=pairs, eval_qrels=eval_qrels,
                        train_queries=int(train_clicks["qkey"].nunique()),
                        eval_queries=len(eval_qrels), recent_qrels=recent_qrels,
                        pool_new=len({normalize_query(q) for q in eval_qrels} - seen_before),
                        replayed=len(replay), dropped_as_noise=dropped,
                        examination=model.examination if model else {},
                        clicked_for=clicked_for, shown=shown, tune_qrels=tune_qrels)


def chance_similarity(vectors: np.ndarray) -> float:
    """The mean cosine of two different documents among `vectors` (a random sample of the
    corpus): what any two documents share under this model. It differs a lot between
    models (MiniLM about 0.14 on SciFact, multilingual-e5-small 0.85 on cmrc2018)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n = len(unit)
    if n < 2:
        return 0.0
    sims = unit @ unit.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def above_chance(cosine: float, chance: float) -> float:
    """`cosine` on a scale where 0 is `chance_similarity` and 1 is identical, so one
    near-duplicate threshold means the same under every model."""
    return (cosine - chance) / max(1.0 - chance, 1e-6)


class StoredVectors(Protocol):
    doc_ids: list[str]

    def vectors(self, doc_ids: list[str]) -> np.ndarray: ...


def similarity_above_chance(index: StoredVectors, doc_ids: set[str],
                            sample_size: int = 1000
                            ) -> tuple[float, Callable[[str, str], float]]:
    """How alike two of `doc_ids` are under the model that built `index`, read from
    its stored vectors (no encoding): 0 is what two random documents share
    (`chance_similarity` over a fixed sample of the index, returned first), 1 is
    identical."""
    sample = np.random.default_rng(0).choice(len(index.doc_ids),
                                             min(sample_size, len(index.doc_ids)),
                                             replace=False)
    chance = chance_similarity(index.vectors([index.doc_ids[i] for i in sample]))
    ids = sorted(doc_ids)
    vectors = index.vectors(ids).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {doc_id: i for i, doc_id in enumerate(ids)}

    def similarity(a: str, b: str) -> float:
        return above_chance(float(vectors[row[a]] @ vectors[row[b]]), chance)

    return chance, similarity


@dataclass(frozen=True)
class MinedNegatives:
    mined: int  # pairs whose negative now comes from the corpus
    near_duplicates: int  # documents passed over as near-duplicates of the positive


def mine_corpus_negatives(pairs: pd.DataFrame, hits: dict[str, list[tuple[str, float]]],
                          clicked_for: dict[str, set[str]], relative_margin: float,
                          similarity: Callable[[str, str], float] | None = None,
                          max_similarity: float = 1.0) -> tuple[list[str | None], int]:
    """One hard negative per (query, positive) pair, mined from the whole corpus with the
    champion: the highest-ranked document that users never clicked for the query and that
    scores below the positive by at least `relative_margin` of the positive's score
    magnitude, sentence-transformers' `mine_hard_negatives` rule. A document ranked that
    close to the positive, or above it, is as likely an unlabelled relevant document as a
    negative.

    `hits` maps each query key to the champion's top-k (doc_id, score) over the corpus.
    None where nothing qualifies, including when the positive is not in the top-k: then
    every document shown there ranks above it and fails the margin.

    A document whose `similarity` to the positive (cosine of their vectors) exceeds
    `max_similarity` is a near-duplicate of it and is passed over too. Returns the
    negatives and how many near-duplicates were passed over.
    """
    mined: list[str | None] = []
    passed_over = 0
    for qkey, positive in zip(pairs["qkey"], pairs["doc_id"], strict=True):
        ranked = hits.get(qkey, [])
        scores = dict(ranked)
        if positive not in scores:
            mined.append(None)
            continue
        ceiling = scores[positive] - abs(scores[positive]) * relative_margin
        clicked = clicked_for.get(qkey, set())
        found = None
        for doc, score in ranked:
            if doc == positive or doc in clicked or score > ceiling:
                continue
            if similarity is not None and similarity(positive, doc) > max_similarity:
                passed_over += 1
                continue
            found = doc
            break
        mined.append(found)
    return mined, passed_over
