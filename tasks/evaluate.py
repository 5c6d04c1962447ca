from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from embedloop.config import Settings
from embedloop.corpus import document_texts
from embedloop.encoding import encode, load_model, pick_device
from embedloop.errors import ConfigError
from embedloop.evaluation import EvalReport, evaluate_rankings
from embedloop.index import LoadedIndex
from tasks._stage import stage

RETRIEVE_K = 100


@stage(name="encode chunk")
def encode_chunk(model: Any, texts: list[str], batch_size: int, precision: str,
                 max_seq_length: int | None = None) -> np.ndarray:
    """`model` is a loaded model (in-process runners) or its folder (workers elsewhere
    load it once per process)."""
    if isinstance(model, str):
        model = _load_cached(model, pick_device(), max_seq_length)
    return encode(model, texts, batch_size=batch_size, precision=precision,
                  show_progress=True)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, device: str, max_seq_length: int | None) -> Any:
    return load_model(path, device, max_seq_length)


def make_task_runner(settings: Settings) -> TaskRunner[Any]:
    """threads: one process (torch already uses every core, so one worker by default);
    dask: chunks spread over a Dask cluster (`dask_address`, or a local one)."""
    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.encode_workers)
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.encode_workers,
                                              "threads_per_worker": 1})
    raise ConfigError(f"task_runner must be 'threads' or 'dask', not {settings.task_runner!r}")


def encode_corpus_stage(settings: Settings, model: Any, model_path: str, corpus: pd.DataFrame,
                        precision: str) -> np.ndarray:
    """Corpus vectors in chunks of `encode_chunk_docs`, each a task on the configured
    runner, so a large re-index spreads over workers; one chunk runs in-process."""
    texts = document_texts(corpus)
    size = settings.encode_chunk_docs
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)] or [[]]
    common = {"batch_size": settings.encode_batch_size, "precision": precision,
              "max_seq_length": settings.max_seq_length}
    task = encode_chunk.with_options(timeout_seconds=settings.encode_timeout_s)
    if len(chunks) == 1:
        vectors = task(model, chunks[0], **common)
    else:
        in_process = settings.task_runner == "threads"
        with make_task_runner(settings) as runner:
            futures = [runner.submit(task, {"model": model if in_process else model_path,
                                            "texts": chunk, **common}) for chunk in chunks]
            vectors = np.vstack([f.result() for f in futures])
    get_run_logger().info("encoded %d documents in %d chunk(s) (%s, %s runner)", len(vectors),
                          len(chunks), precision, settings.task_runner)
    return vectors


@stage(name="evaluate")
def evaluate_stage(settings: Settings, label: str, model: object, index: LoadedIndex,
                   qrels: dict[str, dict[str, int]], precision: str) -> EvalReport:
    """Rank the full corpus for every evaluation query and score against its labels."""
    queries = sorted(qrels)
    vectors = encode(model, queries, batch_size=settings.encode_batch_size, precision=precision)
    hits = index.search(vectors, RETRIEVE_K)
    rankings = {q: [doc_id for doc_id, _ in h] for q, h in zip(queries, hits, strict=True)}
    report = evaluate_rankings(rankings, qrels, settings.primary_metric)
    get_run_logger().info("%s: %s", label, ", ".join(f"{k} {v:.4f}"
                                                     for k, v in report.means.items()))
    return report
