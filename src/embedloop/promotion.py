"""The promotion gate: a pure decision that says why, in words and numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedloop.evaluation import EvalReport

# Means of per-query scores carry float noise (0.51 - 0.50 = 0.010000000000000009): a
# difference this small is no difference.
EPSILON = 1e-9


@dataclass(frozen=True)
class PromotionPolicy:
    primary_metric: str = "ndcg@10"
    min_improvement: float = 0.005  # absolute, on the primary metric
    min_eval_queries: int = 5


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    incumbent: float
    delta: float
    numbers: dict[str, float] = field(default_factory=dict)


def should_promote(candidate: EvalReport, incumbent: EvalReport,
                   policy: PromotionPolicy) -> Decision:
    """Promote only on a strict improvement of at least `min_improvement`; a tie
    (or anything less) keeps the incumbent."""
    metric = policy.primary_metric
    cand, inc = candidate.means[metric], incumbent.means[metric]
    delta = cand - inc
    numbers = {"candidate": cand, "incumbent": inc, "delta": delta,
               "min_improvement": policy.min_improvement,
               "eval_queries": float(candidate.n_queries)}
    if candidate.n_queries != incumbent.n_queries:
        return Decision(False, "candidate and incumbent were not scored on the same queries",
                        cand, inc, delta, numbers)
    if candidate.n_queries < policy.min_eval_queries:
        return Decision(False, f"only {candidate.n_queries} held-out queries; at least "
                        f"{policy.min_eval_queries} are needed to judge", cand, inc, delta, numbers)
    if delta > policy.min_improvement + EPSILON:
        return Decision(True, f"{metric} improved by {delta:+.4f} ({inc:.4f} -> {cand:.4f}), "
                        f"more than the required {policy.min_improvement:.4f}",
                        cand, inc, delta, numbers)
    if delta > EPSILON:
        why = (f"improved by only {delta:+.4f}, not more than the required "
               f"{policy.min_improvement:.4f}")
    elif delta >= -EPSILON:
        why = "tied with the incumbent (a tie keeps the incumbent)"
    else:
        why = f"is worse than the incumbent by {-delta:.4f}"
    return Decision(False, f"candidate {metric} {why} ({inc:.4f} -> {cand:.4f})",
                    cand, inc, delta, numbers)
