from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import document_texts
from embedloop.encoding import encode
from embedloop.evaluation import EvalReport, evaluate_rankings
from embedloop.index import LoadedIndex
from tasks._stage import stage

RETRIEVE_K = 100


@stage(name="encode corpus")
def encode_corpus_stage(settings: Settings, model: object, corpus: pd.DataFrame,
                        precision: str) -> np.ndarray:
    vectors = encode(model, document_texts(corpus), batch_size=settings.encode_batch_size,
                     precision=precision, show_progress=True)
    get_run_logger().info("encoded %d documents (%s)", len(vectors), precision)
    return vectors


@stage(name="evaluate")
def evaluate_stage(settings: Settings, label: str, model: object, index: LoadedIndex,
                   qrels: dict[str, dict[str, int]], precision: str) -> EvalReport:
    """Rank the full corpus for every held-out query and score against the clicks."""
    queries = sorted(qrels)
    vectors = encode(model, queries, batch_size=settings.encode_batch_size, precision=precision)
    hits = index.search(vectors, RETRIEVE_K)
    rankings = {q: [doc_id for doc_id, _ in h] for q, h in zip(queries, hits, strict=True)}
    report = evaluate_rankings(rankings, qrels, settings.primary_metric)
    get_run_logger().info("%s: %s", label, ", ".join(f"{k} {v:.4f}"
                                                     for k, v in report.means.items()))
    return report
