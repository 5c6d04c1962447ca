"""The recipe: from a batch's accepted clicks to a candidate model.

    clicks -> pairs (click model, pool and tune queries held out) -> hard negatives mined
    from the corpus by the champion -> fine-tune (query side, or both) -> mixed back
    towards the parent by as much as the tune queries ask (query side)

Every setting it reads is in `Recipe`; each step returns a new value and leaves its
input as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from embedloop.config import TrainingConfig
from embedloop.index.base import VectorIndex
from embedloop.index.build import dense_only
from embedloop.ingest.corpus import document_texts
from embedloop.judge.evaluation import condensed
from embedloop.learn.pairs import (
    MinedNegatives,
    TrainingData,
    build_training_data,
    mine_corpus_negatives,
    similarity_above_chance,
)
from embedloop.learn.training import (
    FineTuneResult,
    fine_tune,
    fine_tune_query_side,
    mix_by_score,
)
from embedloop.models.encoding import load_model
from embedloop.report.log import Log
from embedloop.search.retrieval import Retriever, evaluate_retrieval

if TYPE_CHECKING:
    from embedloop.config import Settings


@dataclass(frozen=True)
class Recipe:
    """What turns clicks into a candidate (config.py documents each setting)."""

    holdout_fraction: float = 0.2
    min_click_relevance: float = 0.5
    graded_labels: bool = True
    hard_negatives: bool = True
    replay_fraction: float = 0.25
    weight_by_relevance: bool = True
    mine_negatives: bool = True
    negative_search_k: int = 50
    negative_relative_margin: float = 0.05
    negative_max_similarity: float = 0.9
    train_side: str = "query"
    tune_fraction: float = 0.15
    mixing_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    min_tune_queries: int = 10
    harm_alpha: float = 0.05
    harm_margin: float = 0.01
    primary_metric: str = "ndcg@10"
    training: TrainingConfig = TrainingConfig()
    max_seq_length: int | None = None
    encode_batch_size: int = 64
    # a hybrid deployment's fusion weights to choose from (learn/fusion.py); empty: dense,
    # or a fixed weight
    fusion_weights: tuple[float, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Recipe:
        return cls(settings.holdout_fraction, settings.min_click_relevance,
                   settings.eval_labels == "graded", settings.hard_negatives,
                   settings.replay_fraction, settings.weight_by_relevance,
                   settings.hard_negatives and settings.mine_negatives,
                   settings.negative_search_k, settings.negative_relative_margin,
                   settings.negative_max_similarity, settings.train_side,
                   settings.tune_fraction, settings.mixing_weights,
                   settings.min_holdout_queries, settings.harm_alpha, settings.harm_margin,
                   settings.primary_metric, settings.training, settings.max_seq_length,
                   settings.encode_batch_size,
                   settings.fusion_weights if settings.retriever == "hybrid" else ())

    @property
    def mixes(self) -> bool:
        return self.train_side == "query" and bool(self.mixing_weights)

    @property
    def tunes(self) -> bool:
        """Tune queries are held out: to mix the candidate, or to choose its fusion."""
        return self.mixes or bool(self.fusion_weights)


def build_pairs(recipe: Recipe, accepted: pd.DataFrame, corpus: pd.DataFrame,
                never_train: set[str] | None = None,
                history: pd.DataFrame | None = None) -> TrainingData:
    """Training pairs from the batch (and replayed history), and the queries held out:
    the evaluation pool, and, when the candidate is mixed or its fusion chosen, the tune
    queries."""
    texts = dict(zip(corpus["doc_id"], document_texts(corpus), strict=True))
    data = build_training_data(accepted, texts, recipe.holdout_fraction, never_train,
                               history=history, min_relevance=recipe.min_click_relevance,
                               graded_labels=recipe.graded_labels,
                               hard_negatives=recipe.hard_negatives,
                               replay_fraction=recipe.replay_fraction,
                               tune_fraction=recipe.tune_fraction if recipe.tunes else 0.0,
                               seed=recipe.training.seed)
    if recipe.weight_by_relevance:
        data = dataclasses.replace(data, pairs=data.pairs.assign(weight=data.pairs["relevance"]))
    return data


def mine_negatives(recipe: Recipe, data: TrainingData, champion: Retriever,
                   corpus: pd.DataFrame, log: Log | None = None
                   ) -> tuple[TrainingData, MinedNegatives]:
    """`data` with each pair's skipped-document negative replaced by one mined from the
    whole corpus by the champion, through its live index (no corpus re-encode), passing
    over near-duplicates of the positive (their vectors from the same index)."""
    pairs = data.pairs
    if "negative" not in pairs.columns or pairs.empty:
        return data, MinedNegatives(0, 0)
    first_text = pairs.drop_duplicates("qkey").set_index("qkey")["anchor"]
    found_hits = champion.search(list(first_text), recipe.negative_search_k)
    hits = {qkey: [(hit.doc_id, hit.score) for hit in found]
            for qkey, found in zip(first_text.index, found_hits, strict=True)}
    similarity, chance = None, float("nan")
    if recipe.negative_max_similarity < 1:
        chance, similarity = similarity_above_chance(
            champion.index, set(pairs["doc_id"]) | {d for found in hits.values() for d, _ in found})
    mined, near_duplicates = mine_corpus_negatives(
        pairs, hits, data.clicked_for, recipe.negative_relative_margin, similarity,
        recipe.negative_max_similarity)
    found = pd.Series(mined, index=pairs.index).dropna()
    wanted = corpus[corpus["doc_id"].isin(set(found))]  # texts only for what was mined
    texts = dict(zip(wanted["doc_id"], document_texts(wanted), strict=True))
    pairs = pairs.copy()
    pairs.loc[found.index, "negative_id"] = found
    pairs.loc[found.index, "negative"] = found.map(texts)
    (log or logging.getLogger(__name__)).info(
        "hard negatives: %d of %d pairs mined from the corpus with the champion (relative "
        "margin %.2f; %d near-duplicates of a positive passed over, similarity above %.2f of "
        "the way from chance, cosine %.3f, to identical); the rest keep a skipped or random "
        "document", len(found), len(pairs), recipe.negative_relative_margin, near_duplicates,
        recipe.negative_max_similarity, chance)
    return dataclasses.replace(data, pairs=pairs), MinedNegatives(len(found), near_duplicates)


def train_candidate(recipe: Recipe, base_model: str, data: TrainingData, work_dir: Path,
                    device: str, documents: VectorIndex) -> FineTuneResult:
    """`train_side` "full": both encoders, from `base_model`. "query": its query encoder
    only, against the vectors `documents` (the champion's index) holds for the pairs'
    documents, so no document is encoded; then the candidate keeps the largest share of
    the fine-tune (`mixing_weights`) that ranks the tune queries no worse than its parent
    (a loss within `harm_margin`, not credible at `harm_alpha`)."""
    pairs = data.pairs
    if recipe.train_side != "query":
        return fine_tune(base_model, pairs, work_dir, recipe.training, device=device,
                         max_seq_length=recipe.max_seq_length)
    needed = sorted(set(pairs["doc_id"]) | set(pairs.get("negative_id", pd.Series()).dropna()))
    training = dataclasses.replace(recipe.training,
                                   learning_rate=recipe.training.query_learning_rate)
    result = fine_tune_query_side(base_model, pairs, needed, documents.vectors(needed),
                                  work_dir, training, device=device,
                                  max_seq_length=recipe.max_seq_length)
    if recipe.mixing_weights and len(data.tune_qrels) >= recipe.min_tune_queries:
        result = mixed_back(recipe, base_model, result, data, documents)
    return result


def mixed_back(recipe: Recipe, base_model: str, tuned: FineTuneResult, data: TrainingData,
               documents: VectorIndex) -> FineTuneResult:
    """The fine-tune mixed back towards its parent by as much as the tune queries ask:
    each mix searches the champion's index, scored over the documents users were shown.
    By its vectors alone: the mix guards the query encoder against drift, and a hybrid
    ranker's BM25 side would hide a wrecked encoder (it ranks the fused list nearly as
    well), leaving the fusion weight nothing sound to learn on."""
    qrels, shown = data.tune_qrels, data.shown_for(data.tune_qrels)
    documents = dense_only(documents)

    def score(model: Any) -> np.ndarray:
        report = evaluate_retrieval(Retriever(model, documents, recipe.encode_batch_size),
                                    qrels, primary_metric=recipe.primary_metric)
        return condensed(report, qrels, shown).per_query[recipe.primary_metric].to_numpy()

    parent = load_model(base_model, device=tuned.device, max_seq_length=recipe.max_seq_length)
    model, mixing = mix_by_score(parent, tuned.model, recipe.mixing_weights, score,
                                 recipe.harm_alpha, recipe.harm_margin)
    shutil.rmtree(tuned.path)
    model.save(str(tuned.path))
    return dataclasses.replace(tuned, model=model, mixing=mixing)
