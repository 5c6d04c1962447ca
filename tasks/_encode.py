"""How a pipeline run encodes a corpus: its chunks as tasks on the configured runner, so a
large re-index spreads over workers (threads in this process, or a Dask cluster).
Shared by the stages that build indexes; the building itself is the library's
(embedloop.index.build)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from embedloop.config import Settings
from embedloop.index.base import IndexStore
from embedloop.index.build import CorpusEncoding, CorpusIndexer, EncodeChunks
from embedloop.models.encoding import encode, load_model, pick_device
from embedloop.tasks._stage import stage


@stage(name="encode chunk")
def encode_chunk(model: Any, texts: list[str], batch_size: int, precision: str,
                 max_seq_length: int | None = None) -> np.ndarray:
    """`model` is a loaded model (in-process runners) or its folder (workers elsewhere
    load it once per process)."""
    if isinstance(model, str):
        model = _load_cached(model, pick_device(), max_seq_length)
    return encode(model, texts, role="document", batch_size=batch_size, precision=precision,
                  show_progress=True)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, device: str, max_seq_length: int | None) -> Any:
    return load_model(path, device, max_seq_length)


def make_task_runner(task_runner: str, dask_address: str, workers: int) -> TaskRunner[Any]:
    """threads: one process (torch already uses every core, so one worker by default);
    dask: chunks spread over a Dask cluster (`dask_address`, or a local one)."""
    if task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=workers)


def chunks_on_runner(task_runner: str, dask_address: str, workers: int,
                     timeout_s: float) -> EncodeChunks:
    """Each chunk an "encode chunk" task: one runs in-process, more go to the runner
    (workers in other processes are given the model's folder, not the model)."""
    task = encode_chunk.with_options(timeout_seconds=timeout_s)

    def run(model: Any, model_path: str, chunks: list[list[str]],
            options: dict[str, Any]) -> list[np.ndarray]:
        if len(chunks) == 1:
            return [task(model, chunks[0], **options)]
        in_process = task_runner == "threads"
        with make_task_runner(task_runner, dask_address, workers) as runner:
            futures = [runner.submit(task, {"model": model if in_process else model_path,
                                            "texts": chunk, **options}) for chunk in chunks]
            return [f.result() for f in futures]

    return run


class RunLogger:
    """The logger of whichever Prefect run is running when a line is logged, so a line
    logged inside a stage belongs to that stage's task run."""

    def info(self, msg: str, /, *args: object) -> None:
        get_run_logger().info(msg, *args)

    def warning(self, msg: str, /, *args: object) -> None:
        get_run_logger().warning(msg, *args)


def corpus_indexer(settings: Settings, store: IndexStore, corpus: pd.DataFrame,
                   precision: str) -> CorpusIndexer:
    """The library's indexer, its chunks on this run's task runner, logging to Prefect."""
    return CorpusIndexer(store, corpus, precision, CorpusEncoding.from_settings(settings),
                         chunks_on_runner(settings.task_runner, settings.dask_address,
                                          settings.encode_workers, settings.encode_timeout_s),
                         RunLogger(), settings.task_runner, settings.lexical_spec,
                         learns_weight=bool(settings.fusion_weights))
