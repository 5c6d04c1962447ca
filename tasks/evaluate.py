"""Evaluate: the incumbent and the candidate, each searching its documents, on the same
queries; and the offline screen's judgement (embedloop.judge.offline)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from embedloop.faults import crash_point
from embedloop.index.build import CorpusIndexer
from embedloop.ingest.corpus import corpus_fingerprint, load_judged_queries
from embedloop.ingest.ledger import EvidenceLedger
from embedloop.judge.offline import Evaluation, evaluate_both, judge_offline
from embedloop.judge.policy import Judge, Judgement, Policy
from embedloop.learn.fusion import FusionChoice, tune_fusion
from embedloop.learn.pairs import TrainingData
from embedloop.learn.training import FineTuneResult
from embedloop.models.encoding import load_model
from embedloop.production.champion import Champion, Production
from embedloop.search.retrieval import Retriever
from embedloop.tasks._stage import stage


@stage(name="incumbent")
def incumbent_stage(production: Production, champion: Champion, index_corpus: CorpusIndexer,
                    device: str, max_seq_length: int | None, batch_size: int
                    ) -> tuple[Retriever, str | None]:
    """The champion searching the index it built (Production.incumbent_index)."""
    model = load_model(champion.model_path, device, max_seq_length)
    index, note = production.incumbent_index(model, champion.model_path, index_corpus,
                                             corpus_fingerprint(index_corpus.corpus))
    return Retriever(model, index, batch_size), note


@stage(name="index candidate")
def candidate_stage(tuned: FineTuneResult, index_corpus: CorpusIndexer, incumbent: Retriever,
                    batch_size: int) -> Retriever:
    """The candidate searching its documents: a full candidate's are the corpus encoded
    again; a query-side candidate's are the incumbent's index as it is (no encoding)."""
    if tuned.side == "query":
        return Retriever(tuned.model, incumbent.index, batch_size)
    return Retriever(tuned.model, index_corpus(tuned.model, str(tuned.path)), batch_size)


@stage(name="fusion weight")
def fusion_weight_stage(candidate: Retriever, incumbent: Retriever, weights: tuple[float, ...],
                        data: TrainingData, min_queries: int, alpha: float, metric: str
                        ) -> tuple[Retriever, FusionChoice]:
    """A hybrid candidate's fusion weight, chosen on the tune queries (learn/fusion.py)."""
    assert incumbent.index.lexical is not None, "a hybrid candidate has a hybrid incumbent"
    retriever, choice = tune_fusion(candidate, incumbent.index.lexical.fusion.weight, weights,
                                    data, min_queries, alpha, metric)
    get_run_logger().info("fusion weight: %s", choice.why)
    return retriever, choice


@stage(name="evaluate")
def evaluate_stage(candidate: Retriever, incumbent: Retriever, data: TrainingData,
                   guard_qrels: dict[str, dict[str, float]] | None, judged_queries: str,
                   corpus: pd.DataFrame, primary_metric: str, batch_size: int) -> Evaluation:
    """Rank the full corpus for every pool, guard and judged query with each model."""
    crash_point("evaluate")
    judged = (load_judged_queries(judged_queries, set(corpus["doc_id"]))
              if judged_queries else None)
    return evaluate_both(candidate, incumbent, data, guard_qrels, judged, primary_metric,
                         batch_size, get_run_logger())


@stage(name="judge offline")
def judge_offline_stage(policy: Policy, state_dir: Path, evaluation: Evaluation,
                        candidate: str) -> Judgement:
    """The offline screen (embedloop.judge.offline.judge_offline)."""
    judgement = judge_offline(evaluation, Judge(policy, EvidenceLedger(state_dir)), policy,
                              candidate)
    get_run_logger().info("offline: %s - %s", judgement.action, judgement.reason)
    return judgement
