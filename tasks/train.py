from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import document_texts
from embedloop.pairs import TrainingData, build_training_data
from embedloop.training import FineTuneResult, fine_tune
from tasks._stage import stage


@stage(name="build pairs")
def build_pairs_stage(settings: Settings, accepted: pd.DataFrame, corpus: pd.DataFrame,
                      never_train: set[str] | None = None,
                      history: pd.DataFrame | None = None) -> TrainingData:
    texts = dict(zip(corpus["doc_id"], document_texts(corpus), strict=True))
    data = build_training_data(accepted, texts, settings.holdout_fraction,
                               settings.min_holdout_queries, never_train, history=history,
                               min_relevance=settings.min_click_relevance,
                               hard_negatives=settings.hard_negatives,
                               replay_fraction=settings.replay_fraction,
                               seed=settings.training.seed)
    get_run_logger().info(
        "%d training pairs from %d queries (%d replayed, %d clicks judged noise); %d held-out "
        "queries; estimated examination by position: %s", len(data.pairs), data.train_queries,
        data.replayed, data.dropped_as_noise, data.eval_queries,
        {k: round(v, 3) for k, v in list(data.examination.items())[:10]})
    return data


@stage(name="fine-tune")
def fine_tune_stage(settings: Settings, base_model: str, pairs: pd.DataFrame,
                    work_dir: Path, device: str) -> FineTuneResult:
    result = fine_tune(base_model, pairs, work_dir, settings.training, device=device,
                       max_seq_length=settings.max_seq_length)
    get_run_logger().info("fine-tuned %d steps in %.1f s on %s (%s), loss %.4f", result.steps,
                          result.seconds, result.device, result.precision, result.train_loss)
    return result
