from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import document_texts
from embedloop.encoding import load_model
from embedloop.evaluation import condensed
from embedloop.index import VectorIndex
from embedloop.pairs import (
    MinedNegatives,
    TrainingData,
    build_training_data,
    mine_corpus_negatives,
    similarity_above_chance,
)
from embedloop.retrieval import Retriever, evaluate_retrieval
from embedloop.training import FineTuneResult, fine_tune, fine_tune_query_side, mix_by_score
from tasks._stage import stage


@stage(name="build pairs")
def build_pairs_stage(settings: Settings, accepted: pd.DataFrame, corpus: pd.DataFrame,
                      never_train: set[str] | None = None,
                      history: pd.DataFrame | None = None) -> TrainingData:
    texts = dict(zip(corpus["doc_id"], document_texts(corpus), strict=True))
    data = build_training_data(accepted, texts, settings.holdout_fraction, never_train,
                               history=history, min_relevance=settings.min_click_relevance,
                               graded_labels=settings.eval_labels == "graded",
                               hard_negatives=settings.hard_negatives,
                               replay_fraction=settings.replay_fraction,
                               tune_fraction=(settings.tune_fraction
                                              if settings.train_side == "query"
                                              and settings.mixing_weights else 0.0),
                               seed=settings.training.seed)
    if settings.weight_by_relevance:
        data.pairs["weight"] = data.pairs["relevance"]
    get_run_logger().info(
        "%d training pairs from %d queries (%d replayed, %d clicks judged noise); evaluation "
        "pool: %d queries (%d new, %d asked in this batch); %d tune queries; estimated "
        "examination by position: %s", len(data.pairs), data.train_queries, data.replayed,
        data.dropped_as_noise, data.eval_queries, data.pool_new, len(data.recent_qrels),
        len(data.tune_qrels),
        {k: round(v, 3) for k, v in list(data.examination.items())[:10]})
    return data


@stage(name="mine negatives")
def mine_negatives_stage(settings: Settings, data: TrainingData, champion: Retriever,
                         corpus: pd.DataFrame) -> MinedNegatives:
    """Replace each pair's skipped-document negative with one mined from the whole corpus
    by the champion, through its live index (no corpus re-encode), passing over
    near-duplicates of the positive (their vectors from the same index)."""
    pairs = data.pairs
    if "negative" not in pairs.columns or pairs.empty:
        return MinedNegatives(0, 0)
    first_text = pairs.drop_duplicates("qkey").set_index("qkey")["anchor"]
    found_hits = champion.search(list(first_text), settings.negative_search_k)
    hits = {qkey: [(hit.doc_id, hit.score) for hit in found]
            for qkey, found in zip(first_text.index, found_hits, strict=True)}
    similarity, chance = None, float("nan")
    if settings.negative_max_similarity < 1:
        chance, similarity = similarity_above_chance(
            champion.index, set(pairs["doc_id"]) | {d for found in hits.values() for d, _ in found})
    mined, near_duplicates = mine_corpus_negatives(
        pairs, hits, data.clicked_for, settings.negative_relative_margin, similarity,
        settings.negative_max_similarity)
    found = pd.Series(mined, index=pairs.index).dropna()
    wanted = corpus[corpus["doc_id"].isin(set(found))]  # texts only for what was mined
    texts = dict(zip(wanted["doc_id"], document_texts(wanted), strict=True))
    pairs.loc[found.index, "negative_id"] = found
    pairs.loc[found.index, "negative"] = found.map(texts)
    get_run_logger().info("hard negatives: %d of %d pairs mined from the corpus with the "
                          "champion (relative margin %.2f; %d near-duplicates of a positive "
                          "passed over, similarity above %.2f of the way from chance, cosine %.3f, "
                          "to identical); the rest keep a skipped or random document",
                          len(found), len(pairs), settings.negative_relative_margin,
                          near_duplicates, settings.negative_max_similarity, chance)
    return MinedNegatives(len(found), near_duplicates)


@stage(name="fine-tune")
def fine_tune_stage(settings: Settings, base_model: str, data: TrainingData,
                    work_dir: Path, device: str, documents: VectorIndex) -> FineTuneResult:
    """`train_side` "full": both encoders, from `base_model`. "query": its query encoder
    only, against the vectors `documents` (the champion's index) holds for the pairs'
    documents, so no document is encoded; then the candidate keeps the largest share of
    the fine-tune (`mixing_weights`) that ranks the tune queries no worse than its parent
    (a loss within `harm_margin`, not credible at `harm_alpha`)."""
    pairs = data.pairs
    if settings.train_side == "query":
        needed = sorted(set(pairs["doc_id"]) | set(pairs.get("negative_id", pd.Series())
                                                   .dropna()))
        training = dataclasses.replace(settings.training,
                                       learning_rate=settings.training.query_learning_rate)
        result = fine_tune_query_side(base_model, pairs, needed, documents.vectors(needed),
                                      work_dir, training, device=device,
                                      max_seq_length=settings.max_seq_length)
        if settings.mixing_weights and len(data.tune_qrels) >= settings.min_holdout_queries:
            result = _mixed(settings, base_model, result, data, documents)
    else:
        result = fine_tune(base_model, pairs, work_dir, settings.training, device=device,
                           max_seq_length=settings.max_seq_length)
    get_run_logger().info("fine-tuned (%s side) %d steps in %.1f s on %s (%s), loss %.4f%s",
                          result.side, result.steps, result.seconds, result.device,
                          result.precision, result.train_loss,
                          f"; mix: {result.mixing.why}" if result.mixing else "")
    return result


def _mixed(settings: Settings, base_model: str, tuned: FineTuneResult, data: TrainingData,
           documents: VectorIndex) -> FineTuneResult:
    """The fine-tune mixed back towards its parent by as much as the tune queries ask:
    each mix searches the champion's index, scored over the documents users were shown."""
    qrels, shown = data.tune_qrels, data.shown_for(data.tune_qrels)

    def score(model: Any) -> np.ndarray:
        report = evaluate_retrieval(Retriever(model, documents, settings.encode_batch_size),
                                    qrels, primary_metric=settings.primary_metric)
        return condensed(report, qrels, shown).per_query[settings.primary_metric].to_numpy()

    parent = load_model(base_model, device=tuned.device, max_seq_length=settings.max_seq_length)
    model, mixing = mix_by_score(parent, tuned.model, settings.mixing_weights, score,
                                 settings.harm_alpha, settings.harm_margin)
    shutil.rmtree(tuned.path)
    model.save(str(tuned.path))
    return dataclasses.replace(tuned, model=model, mixing=mixing)
