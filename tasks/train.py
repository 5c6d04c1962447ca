"""Learn: pairs from the batch's clicks, hard negatives mined by the champion, and the
fine-tune (embedloop.learn.recipe)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.index.base import VectorIndex
from embedloop.learn.pairs import MinedNegatives, TrainingData
from embedloop.learn.recipe import Recipe, build_pairs, mine_negatives, train_candidate
from embedloop.learn.training import FineTuneResult
from embedloop.search.retrieval import Retriever
from embedloop.tasks._stage import stage


@stage(name="build pairs")
def build_pairs_stage(recipe: Recipe, accepted: pd.DataFrame, corpus: pd.DataFrame,
                      never_train: set[str] | None = None,
                      history: pd.DataFrame | None = None) -> TrainingData:
    data = build_pairs(recipe, accepted, corpus, never_train, history)
    get_run_logger().info(
        "%d training pairs from %d queries (%d replayed, %d clicks judged noise); evaluation "
        "pool: %d queries (%d new, %d asked in this batch); %d tune queries; estimated "
        "examination by position: %s", len(data.pairs), data.train_queries, data.replayed,
        data.dropped_as_noise, data.eval_queries, data.pool_new, len(data.recent_qrels),
        len(data.tune_qrels),
        {k: round(v, 3) for k, v in list(data.examination.items())[:10]})
    return data


@stage(name="mine negatives")
def mine_negatives_stage(recipe: Recipe, data: TrainingData, champion: Retriever,
                         corpus: pd.DataFrame) -> tuple[TrainingData, MinedNegatives]:
    return mine_negatives(recipe, data, champion, corpus, get_run_logger())


@stage(name="fine-tune")
def fine_tune_stage(recipe: Recipe, base_model: str, data: TrainingData, work_dir: Path,
                    device: str, documents: VectorIndex) -> FineTuneResult:
    result = train_candidate(recipe, base_model, data, work_dir, device, documents)
    get_run_logger().info("fine-tuned (%s side) %d steps in %.1f s on %s (%s), loss %.4f%s",
                          result.side, result.steps, result.seconds, result.device,
                          result.precision, result.train_loss,
                          f"; mix: {result.mixing.why}" if result.mixing else "")
    return result
