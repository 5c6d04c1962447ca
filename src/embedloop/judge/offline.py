"""The offline screen: candidate and incumbent ranking the same queries (the pool, its
recent slice, the guard set, the team's judged queries), the candidate's sanity check, and
the judge's decision from all of it (policy.py), with what the registry records of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from embedloop.judge.evaluation import EvalReport, condensed
from embedloop.judge.evidence import (
    OfflineComparison,
    Source,
    Verdict,
    check_sanity,
    compare_offline,
)
from embedloop.judge.policy import Action, Judge, Judgement, Policy
from embedloop.learn.pairs import TrainingData
from embedloop.models.encoding import encode
from embedloop.search.retrieval import Retriever, evaluate_retrieval

Qrels = dict[str, dict[str, float]]
Pair = tuple[EvalReport, EvalReport]  # (candidate, incumbent)

SANITY_QUERIES = 512  # pool queries whose vectors the sanity check compares


@dataclass(frozen=True)
class Evaluation:
    """Both models (candidate, incumbent) on the same queries: the pool over whole
    rankings and condensed to what users were shown, its recent slice, the guard set
    (both ways), the team's judged queries, and the sanity check of the candidate."""

    pool: Pair
    pool_shown: Pair
    recent: Pair
    guard: Pair | None
    guard_shown: Pair | None
    judged: Pair | None
    sanity: Verdict

    @property
    def candidate(self) -> EvalReport:
        return self.pool[0]

    @property
    def incumbent(self) -> EvalReport:
        return self.pool[1]


def evaluate_both(candidate: Retriever, incumbent: Retriever, data: TrainingData,
                  guard_qrels: Qrels | None, judged_qrels: Qrels | None, primary_metric: str,
                  batch_size: int, log: logging.Logger | logging.LoggerAdapter[Any] | None = None
                  ) -> Evaluation:
    """Rank the full corpus for every pool, guard and judged query with each model."""
    log = log or logging.getLogger(__name__)

    def judge(label: str, retriever: Retriever, qrels: Qrels) -> EvalReport:
        report = evaluate_retrieval(retriever, qrels, primary_metric=primary_metric)
        log.info("%s: %s", label, ", ".join(f"{k} {v:.4f}" for k, v in report.means.items()))
        return report

    def both(label: str, qrels: Qrels) -> Pair:
        return (judge(f"candidate on {label}", candidate, qrels),
                judge(f"incumbent on {label}", incumbent, qrels))

    def shown(reports: Pair, qrels: Qrels) -> Pair:
        seen = data.shown_for(qrels)
        return condensed(reports[0], qrels, seen), condensed(reports[1], qrels, seen)

    pool = both("the pool", data.eval_qrels)
    guard = both("the guard set", guard_qrels) if guard_qrels else None
    # the team's judged queries (whole rankings, not condensed); an empty set is judged
    # too, and found too small
    judged = both("judged queries", judged_qrels) if judged_qrels is not None else None
    queries = sorted(data.eval_qrels)[:SANITY_QUERIES] or ["a query", "another query"]
    vectors = [encode(r.model, queries, role="query", batch_size=batch_size,
                      precision=r.index.precision) for r in (candidate, incumbent)]
    return Evaluation(pool, shown(pool, data.eval_qrels),
                      (pool[0].subset(data.recent_qrels), pool[1].subset(data.recent_qrels)),
                      guard, shown(guard, guard_qrels) if guard and guard_qrels else None,
                      judged, check_sanity(*vectors))


def judge_offline(evaluation: Evaluation, judge: Judge, policy: Policy, candidate: str
                  ) -> Judgement:
    """The offline screen: harm anywhere rejects, credible superiority on the pool
    promotes, anything else goes to the canary. `candidate` names it in the judge's
    record (the run that trained it)."""
    rule = policy.offline_rule()
    verdicts = [evaluation.sanity,
                compare_offline(Source.POOL, evaluation.pool, evaluation.pool_shown, rule)]
    if evaluation.guard and evaluation.guard_shown:
        verdicts.append(compare_offline(Source.GUARD, evaluation.guard, evaluation.guard_shown,
                                        rule))
    if evaluation.judged:
        verdicts.append(compare_offline(Source.JUDGED, evaluation.judged, evaluation.judged,
                                        rule))
    return judge.offline(candidate, verdicts)


# What the registry's `decision` tag says for each offline judgement.
DECISIONS = {Action.PROMOTE: "promoted", Action.CANARY: "to the canary",
             Action.KEEP: "not promoted", Action.REJECT: "rejected"}


def candidate_record(judgement: Judgement, side: str, parent: str, batch_id: str, pairs: int,
                     metric: str) -> tuple[str, dict[str, str]]:
    """The registered candidate's description and tags: what the judge said and why,
    whatever it said, so the registry alone tells each version's story."""
    verdict = DECISIONS[judgement.action]
    tags = {"decision": verdict, "parent_version": parent, "batch": batch_id,
            "train_side": side}
    pool = judgement.verdict(Source.POOL)
    if pool is not None and isinstance(pool.numbers, OfflineComparison):
        tags[metric.replace("@", "_at_")] = f"{pool.numbers.candidate:.4f}"
    return (f"Fine-tuned ({side} side) from v{parent} on batch {batch_id} ({pairs} pairs). "
            f"Decision: {verdict} - {judgement.reason}"), tags
