"""Encode the corpus into an index, evaluate candidate and incumbent on the same queries,
and judge the candidate offline (judge.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from embedloop.base_models import model_prompts
from embedloop.config import Settings
from embedloop.corpus import corpus_fingerprint, document_texts, load_judged_queries
from embedloop.encoding import Runtime, encode, load_model, pick_device, resolve_precision
from embedloop.evaluation import EvalReport, condensed
from embedloop.evidence import Source, Verdict, check_sanity, compare_offline
from embedloop.exported import EXPORTED, export_refusal
from embedloop.faults import crash_point
from embedloop.index import IndexStore, VectorIndex
from embedloop.judge import Judge, Judgement, Policy
from embedloop.ledger import EvidenceLedger
from embedloop.pairs import TrainingData
from embedloop.production import Champion, Production
from embedloop.retrieval import Retriever, evaluate_retrieval
from embedloop.training import FineTuneResult
from tasks._stage import stage


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


def make_task_runner(settings: Settings) -> TaskRunner[Any]:
    """threads: one process (torch already uses every core, so one worker by default);
    dask: chunks spread over a Dask cluster (`dask_address`, or a local one)."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.encode_workers,
                                              "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=settings.encode_workers)


def encode_corpus(settings: Settings, model: Any, model_path: str, corpus: pd.DataFrame,
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


def index_corpus(settings: Settings, store: IndexStore, corpus: pd.DataFrame, precision: str,
                 model: Any, model_path: str) -> VectorIndex:
    """The corpus encoded by `model`, in an index of the kind the live one would be, in
    memory (saved only if it is published)."""
    if precision in EXPORTED and settings.encode_backend == "auto":
        refusal = export_refusal(model)
        if refusal:  # "auto" asked for the fastest way that works: this one does not
            precision = resolve_precision(settings.encode_precision, pick_device())
            get_run_logger().warning("%s; encoding with torch (%s) instead", refusal,
                                     precision)
    vectors = encode_corpus(settings, model, model_path, corpus, precision)
    built = store.build(vectors, list(corpus["doc_id"]), precision=precision,
                        titles=list(corpus["title"]))
    built.prompts = model_prompts(model)
    return built


@stage(name="incumbent")
def incumbent_stage(settings: Settings, production: Production, champion: Champion,
                    corpus: pd.DataFrame, runtime: Runtime) -> tuple[Retriever, str | None]:
    """The champion searching the index it built, which already holds its vectors;
    re-encoded only if the corpus changed since that index was built (a note says so)."""
    model = load_model(champion.model_path, runtime.device, settings.max_seq_length)
    built = production.store.as_built(production.champion_index())  # scored as candidates are
    if built.manifest is not None and built.manifest.corpus_fingerprint == corpus_fingerprint(
            corpus):
        return Retriever(model, built, settings.encode_batch_size), None
    index = index_corpus(settings, production.store, corpus, runtime.encoder, model,
                         champion.model_path)
    version = built.manifest.version if built.manifest else "?"
    return Retriever(model, index, settings.encode_batch_size), (
        f"the corpus changed since index {version} was built; the incumbent was re-encoded "
        f"for a fair comparison")


@stage(name="index candidate")
def candidate_stage(settings: Settings, store: IndexStore, tuned: FineTuneResult,
                    corpus: pd.DataFrame, runtime: Runtime, incumbent: Retriever) -> Retriever:
    """The candidate searching its documents: a full candidate's are the corpus encoded
    again; a query-side candidate's are the incumbent's index as it is (no encoding)."""
    if tuned.side == "query":
        return Retriever(tuned.model, incumbent.index, settings.encode_batch_size)
    index = index_corpus(settings, store, corpus, runtime.encoder, tuned.model,
                         str(tuned.path))
    return Retriever(tuned.model, index, settings.encode_batch_size)


@dataclass(frozen=True)
class Evaluation:
    """Both models (candidate, incumbent) on the same queries: the pool over whole
    rankings and condensed to what users were shown, its recent slice, the guard set
    (both ways), the team's judged queries, and the sanity check of the candidate."""

    pool: tuple[EvalReport, EvalReport]
    pool_shown: tuple[EvalReport, EvalReport]
    recent: tuple[EvalReport, EvalReport]
    guard: tuple[EvalReport, EvalReport] | None
    guard_shown: tuple[EvalReport, EvalReport] | None
    judged: tuple[EvalReport, EvalReport] | None
    sanity: Verdict

    @property
    def candidate(self) -> EvalReport:
        return self.pool[0]

    @property
    def incumbent(self) -> EvalReport:
        return self.pool[1]


SANITY_QUERIES = 512  # pool queries whose vectors the sanity check compares


@stage(name="evaluate")
def evaluate_stage(settings: Settings, candidate: Retriever, incumbent: Retriever,
                   data: TrainingData, guard_qrels: dict[str, dict[str, float]] | None,
                   corpus: pd.DataFrame) -> Evaluation:
    """Rank the full corpus for every pool, guard and judged query with each model."""
    crash_point("evaluate")
    logger = get_run_logger()

    def judge(label: str, retriever: Retriever, qrels: dict[str, Any]) -> EvalReport:
        report = evaluate_retrieval(retriever, qrels, primary_metric=settings.primary_metric)
        logger.info("%s: %s", label, ", ".join(f"{k} {v:.4f}" for k, v in report.means.items()))
        return report

    def both(label: str, qrels: dict[str, dict[str, float]]) -> tuple[EvalReport, EvalReport]:
        return (judge(f"candidate on {label}", candidate, qrels),
                judge(f"incumbent on {label}", incumbent, qrels))

    def shown(reports: tuple[EvalReport, EvalReport], qrels: dict[str, dict[str, float]]
              ) -> tuple[EvalReport, EvalReport]:
        seen = data.shown_for(qrels)
        return condensed(reports[0], qrels, seen), condensed(reports[1], qrels, seen)

    pool = both("the pool", data.eval_qrels)
    guard = both("the guard set", guard_qrels) if guard_qrels else None
    judged = None
    if settings.judged_queries:  # real judgements: the whole ranking, not condensed
        judged = both("judged queries", load_judged_queries(settings.judged_queries,
                                                            set(corpus["doc_id"])))
    queries = sorted(data.eval_qrels)[:SANITY_QUERIES] or ["a query", "another query"]
    vectors = [encode(r.model, queries, role="query", batch_size=settings.encode_batch_size,
                      precision=r.index.precision) for r in (candidate, incumbent)]
    return Evaluation(pool, shown(pool, data.eval_qrels),
                      (pool[0].subset(data.recent_qrels), pool[1].subset(data.recent_qrels)),
                      guard, shown(guard, guard_qrels) if guard and guard_qrels else None,
                      judged, check_sanity(*vectors))


@stage(name="judge offline")
def judge_offline_stage(settings: Settings, evaluation: Evaluation, candidate: str
                        ) -> Judgement:
    """The offline screen (judge.py): harm anywhere rejects, credible superiority on the
    pool promotes, anything else goes to the canary. `candidate` names it in the judge's
    record (the run that trained it)."""
    policy = Policy.from_settings(settings)
    rule = policy.offline_rule()
    verdicts = [evaluation.sanity,
                compare_offline(Source.POOL, evaluation.pool, evaluation.pool_shown, rule)]
    if evaluation.guard and evaluation.guard_shown:
        verdicts.append(compare_offline(Source.GUARD, evaluation.guard, evaluation.guard_shown,
                                        rule))
    if evaluation.judged:
        verdicts.append(compare_offline(Source.JUDGED, evaluation.judged, evaluation.judged,
                                        rule))
    judgement = Judge(policy, EvidenceLedger(settings.state_dir)).offline(candidate, verdicts)
    get_run_logger().info("offline: %s - %s", judgement.action, judgement.reason)
    return judgement
