from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import document_texts
from embedloop.index import VectorIndex
from embedloop.pairs import TrainingData, build_training_data, mine_corpus_negatives
from embedloop.retrieval import Retriever
from embedloop.training import FineTuneResult, fine_tune, fine_tune_query_side
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
                               seed=settings.training.seed)
    if settings.weight_by_relevance:
        data.pairs["weight"] = data.pairs["relevance"]
    get_run_logger().info(
        "%d training pairs from %d queries (%d replayed, %d clicks judged noise); evaluation "
        "pool: %d queries (%d new, %d asked in this batch); estimated examination by "
        "position: %s", len(data.pairs), data.train_queries, data.replayed,
        data.dropped_as_noise, data.eval_queries, data.pool_new, len(data.recent_qrels),
        {k: round(v, 3) for k, v in list(data.examination.items())[:10]})
    return data


@stage(name="mine negatives")
def mine_negatives_stage(settings: Settings, data: TrainingData, champion: Retriever,
                         corpus: pd.DataFrame) -> int:
    """Replace each pair's skipped-document negative with one mined from the whole corpus
    by the champion, through its live index (no corpus re-encode). Returns how many."""
    pairs = data.pairs
    if "negative" not in pairs.columns or pairs.empty:
        return 0
    first_text = pairs.drop_duplicates("qkey").set_index("qkey")["anchor"]
    found_hits = champion.search(list(first_text), settings.negative_search_k)
    hits = {qkey: [(hit.doc_id, hit.score) for hit in found]
            for qkey, found in zip(first_text.index, found_hits, strict=True)}
    mined = mine_corpus_negatives(pairs, hits, data.clicked_for,
                                  settings.negative_relative_margin)
    found = pd.Series(mined, index=pairs.index).dropna()
    wanted = corpus[corpus["doc_id"].isin(set(found))]  # texts only for what was mined
    texts = dict(zip(wanted["doc_id"], document_texts(wanted), strict=True))
    pairs.loc[found.index, "negative_id"] = found
    pairs.loc[found.index, "negative"] = found.map(texts)
    get_run_logger().info("hard negatives: %d of %d pairs mined from the corpus with the "
                          "champion (relative margin %.2f); the rest keep a skipped or "
                          "random document", len(found), len(pairs),
                          settings.negative_relative_margin)
    return len(found)


@stage(name="fine-tune")
def fine_tune_stage(settings: Settings, base_model: str, pairs: pd.DataFrame,
                    work_dir: Path, device: str, documents: VectorIndex) -> FineTuneResult:
    """`train_side` "full": both encoders, from `base_model`. "query": its query encoder
    only, against the vectors `documents` (the champion's index) holds for the pairs'
    documents, so no document is encoded."""
    if settings.train_side == "query":
        needed = sorted(set(pairs["doc_id"]) | set(pairs.get("negative_id", pd.Series())
                                                   .dropna()))
        training = dataclasses.replace(settings.training,
                                       learning_rate=settings.training.query_learning_rate)
        result = fine_tune_query_side(base_model, pairs, needed, documents.vectors(needed),
                                      work_dir, training, device=device,
                                      max_seq_length=settings.max_seq_length)
    else:
        result = fine_tune(base_model, pairs, work_dir, settings.training, device=device,
                           max_seq_length=settings.max_seq_length)
    get_run_logger().info("fine-tuned (%s side) %d steps in %.1f s on %s (%s), loss %.4f",
                          result.side, result.steps, result.seconds, result.device,
                          result.precision, result.train_loss)
    return result
