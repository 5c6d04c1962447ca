"""The promotion gate: a pure decision that says why, in words and numbers.

A candidate is promoted only if, on the same evaluation-pool queries as the incumbent,
1. its primary metric is higher by more than `min_improvement` (a tie keeps the
   incumbent),
2. the gain is credible: a paired randomization test over per-query deltas gives
   p below this look's share of `alpha` (the bootstrap confidence interval is recorded
   beside it), and
3. on the guard set (fixed queries re-checked every run) it does not lose more
   than `guard_tolerance`, so a gain on new logs cannot hide a regression elsewhere.

Looks. The pool is the same growing evidence every night, so a champion is judged
against again and again; testing each look at `alpha` would promote a useless candidate
far more often than `alpha` over a champion's lifetime (naive re-testing). Instead the
k-th look against one champion may spend alpha / (k (k + 1)), and these shares add up
to alpha over all looks (alpha spending with a union bound: valid whatever the
correlation between looks). Early looks get most of it (alpha/2, alpha/6, ...); later
ones need more evidence, which a pool that keeps growing provides.

Canaries. A candidate that improved on the pool but not credibly yet, and held the guard
set, is "waiting for evidence": the service may interleave it with the champion for a
share of sessions (interleaving.py). A later run judges those sessions' clicks with
`judge_canary`, as one more look at the same champion: same alpha spending, same look
counter, so offline and online evidence together promote a useless candidate no more
often than `alpha`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

from embedloop.evaluation import EvalReport
from embedloop.interleaving import InterleavingEvidence
from embedloop.significance import bootstrap_ci, randomization_p_value, samples_to_resolve

# Means of per-query scores carry float noise (0.51 - 0.50 = 0.010000000000000009): a
# difference this small is no difference.
EPSILON = 1e-9


@dataclass(frozen=True)
class PromotionPolicy:
    primary_metric: str = "ndcg@10"
    min_improvement: float = 0.005  # absolute, on the primary metric
    min_eval_queries: int = 5
    alpha: float = 0.05  # over all looks at one champion; 1.0 turns significance off
    guard_tolerance: float = 0.01  # largest allowed loss on the guard set
    confidence: float = 0.95


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    incumbent: float
    delta: float
    numbers: dict[str, float] = field(default_factory=dict)
    # Improved by more than min_improvement but not credibly yet, and not worse on the
    # guard set: evidence from an interleaved canary could decide it.
    waiting: bool = False


def alpha_for_look(alpha: float, look: int) -> float:
    """The share of `alpha` the `look`-th judgement (1-based) may spend; sums to alpha."""
    if look < 1:
        raise ValueError(f"looks count from 1, got {look}")
    return alpha / (look * (look + 1))


def alpha_spent(alpha: float, looks: int) -> float:
    """What looks 1..`looks` have spent together: alpha * looks / (looks + 1)."""
    return alpha * looks / (looks + 1)


def queries_needed(deltas: np.ndarray, alpha: float) -> int:
    """About how many pool queries a gain like this one needs before a one-sided test at
    `alpha` calls it credible (normal approximation: the z-score grows with sqrt(n))."""
    n, mean, sd = len(deltas), float(np.mean(deltas)), float(np.std(deltas, ddof=1))
    if n < 2 or mean <= 0 or sd == 0:
        return n
    z_needed = NormalDist().inv_cdf(1.0 - alpha)
    return max(n, math.ceil((z_needed * sd / mean) ** 2))


def paired_deltas(candidate: EvalReport, incumbent: EvalReport, metric: str) -> np.ndarray:
    """Per-query candidate - incumbent, matched by query; (n_queries,)."""
    merged = candidate.per_query.merge(incumbent.per_query, on="query", suffixes=("_c", "_i"))
    return (merged[f"{metric}_c"] - merged[f"{metric}_i"]).to_numpy(dtype=np.float64)


def should_promote(candidate: EvalReport, incumbent: EvalReport, policy: PromotionPolicy,
                   guard: tuple[EvalReport, EvalReport] | None = None, look: int = 1,
                   recent: tuple[EvalReport, EvalReport] | None = None) -> Decision:
    """Judge `candidate` against `incumbent` on the evaluation pool.

    Args:
        guard: both models on the fixed guard set (a loss there vetoes).
        look: how many times this champion has now been judged against, this one
            included; it sets the share of alpha this look may spend.
        recent: both models on this batch's pool queries, reported beside the pool.
    """
    metric = policy.primary_metric
    cand, inc = candidate.means[metric], incumbent.means[metric]
    delta = cand - inc
    look_alpha = alpha_for_look(policy.alpha, look)
    numbers: dict[str, float] = {"candidate": cand, "incumbent": inc, "delta": delta,
                                 "min_improvement": policy.min_improvement,
                                 "eval_queries": float(candidate.n_queries),
                                 "look": float(look), "alpha_look": look_alpha,
                                 "alpha_spent": alpha_spent(policy.alpha, look)}
    if recent is not None:
        numbers.update(recent_delta=recent[0].means[metric] - recent[1].means[metric],
                       recent_queries=float(recent[0].n_queries))
    guard_delta = 0.0
    if guard is not None:  # recorded whatever the outcome: the history plot reads it
        guard_delta = guard[0].means[metric] - guard[1].means[metric]
        numbers.update(guard_candidate=guard[0].means[metric],
                       guard_incumbent=guard[1].means[metric], guard_delta=guard_delta,
                       guard_queries=float(guard[0].n_queries),
                       guard_tolerance=policy.guard_tolerance)

    def keep(why: str) -> Decision:
        return Decision(False, why, cand, inc, delta, numbers)

    same = set(candidate.per_query["query"]) == set(incumbent.per_query["query"])
    if not same or candidate.n_queries != incumbent.n_queries:
        return keep("candidate and incumbent were not scored on the same queries")
    if candidate.n_queries < policy.min_eval_queries:
        return keep(f"only {candidate.n_queries} evaluation-pool queries; at least "
                    f"{policy.min_eval_queries} are needed to judge (the pool grows with "
                    f"every batch)")
    deltas = paired_deltas(candidate, incumbent, metric)
    p_value = randomization_p_value(deltas, samples=samples_to_resolve(look_alpha))
    low, high = bootstrap_ci(deltas, policy.confidence)
    numbers.update(p_value=p_value, ci_low=low, ci_high=high, alpha=policy.alpha,
                   queries_better=float(np.sum(deltas > EPSILON)),
                   queries_worse=float(np.sum(deltas < -EPSILON)))
    evidence = (f"p={p_value:.4f}, {policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}], "
                f"{int(numbers['queries_better'])} queries better, "
                f"{int(numbers['queries_worse'])} worse")
    scores = f"({inc:.4f} -> {cand:.4f} on {candidate.n_queries} pool queries)"
    if delta <= policy.min_improvement + EPSILON:
        if delta > EPSILON:
            why = (f"improved by only {delta:+.4f}, not more than the required "
                   f"{policy.min_improvement:.4f}")
        elif delta >= -EPSILON:
            why = "tied with the incumbent (a tie keeps the incumbent)"
        else:
            why = f"is worse than the incumbent by {-delta:.4f}"
        return keep(f"candidate {metric} {why} {scores}")
    if policy.alpha < 1.0 and p_value >= look_alpha:
        needed = queries_needed(deltas, alpha_for_look(policy.alpha, look + 1))
        numbers["queries_needed"] = float(needed)
        held_guard = guard is None or guard_delta >= -policy.guard_tolerance - EPSILON
        why = (f"candidate {metric} improved by {delta:+.4f} {scores} but not credibly "
               f"yet: {evidence}; look {look} at this champion may spend "
               f"alpha {look_alpha:.4f} (of {policy.alpha} over all looks), so p must be "
               f"below that. Missing evidence: a gain this size needs about {needed} "
               f"pool queries to be credible at the next look; the pool grows with "
               f"every batch")
        return replace(keep(why), waiting=held_guard)
    if guard is not None:
        if guard_delta < -policy.guard_tolerance - EPSILON:
            return keep(f"candidate {metric} improved by {delta:+.4f} {scores} but regressed "
                        f"by {-guard_delta:.4f} on the {guard[0].n_queries} guard queries "
                        f"(tolerance {policy.guard_tolerance})")
    guard_note = (f"; guard set {numbers['guard_delta']:+.4f} on {guard[0].n_queries} queries"
                  if guard is not None else "")
    look_note = (f"; look {look}, p below its alpha {look_alpha:.4f}"
                 if policy.alpha < 1.0 else "")
    return Decision(True, f"{metric} improved by {delta:+.4f} {scores}, more than the required "
                    f"{policy.min_improvement:.4f}, credibly ({evidence}{look_note})"
                    f"{guard_note}",
                    cand, inc, delta, numbers)


@dataclass(frozen=True)
class CanaryVerdict:
    action: str  # "promote", "stop", "continue", or "started" (by the run that kept it)
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)
    version: str = ""  # the canary's model version


def judge_canary(evidence: InterleavingEvidence, policy: PromotionPolicy, look: int,
                 max_sessions: int) -> CanaryVerdict:
    """Judge a canary by its interleaved sessions, as the `look`-th look at the champion.

    Promote: the candidate won more sessions than the champion, and the one-sided sign
    test gives p below this look's share of alpha. Stop: the champion is credibly
    preferred (p below alpha the other way; stopping cannot promote anything, so it
    spends nothing), or `max_sessions` passed without a decision. Otherwise continue.
    """
    look_alpha = alpha_for_look(policy.alpha, look)
    p_value = evidence.p_value
    numbers = {"sessions": float(evidence.sessions),
               "candidate_wins": float(evidence.candidate_wins),
               "champion_wins": float(evidence.champion_wins), "p_value": p_value,
               "look": float(look), "alpha_look": look_alpha}
    tally = (f"{evidence.sessions} interleaved sessions: candidate won "
             f"{evidence.candidate_wins}, champion {evidence.champion_wins}, "
             f"{evidence.ties} tied or without clicks; sign test p={p_value:.4f}")
    if evidence.candidate_wins > evidence.champion_wins and p_value < look_alpha:
        return CanaryVerdict("promote", f"won the interleaved canary ({tally}; look {look} "
                             f"at this champion may spend alpha {look_alpha:.4f})", numbers)
    if evidence.champion_wins > evidence.candidate_wins and \
            evidence.champion_p_value < policy.alpha:
        return CanaryVerdict("stop", f"lost the interleaved canary ({tally}; the champion "
                             f"is preferred at p={evidence.champion_p_value:.4f})", numbers)
    if evidence.sessions >= max_sessions:
        return CanaryVerdict("stop", f"no decision after {tally} (canary_max_sessions "
                             f"{max_sessions})", numbers)
    needed = sessions_needed(evidence, alpha_for_look(policy.alpha, look + 1))
    numbers["sessions_needed"] = float(needed)
    return CanaryVerdict("continue", f"not decided yet ({tally}, must be below "
                         f"{look_alpha:.4f} at look {look}); "
                         + (f"a preference this size needs about {needed} sessions"
                            if needed else "no preference for the candidate so far"),
                         numbers)


def sessions_needed(evidence: InterleavingEvidence, alpha: float) -> int:
    """About how many interleaved sessions the candidate's observed win share needs for
    the sign test to reach `alpha` (normal approximation); 0 when it is not ahead."""
    decided = evidence.candidate_wins + evidence.champion_wins
    if evidence.candidate_wins <= evidence.champion_wins or decided == 0:
        return 0
    share = evidence.candidate_wins / decided  # > 0.5
    z = NormalDist().inv_cdf(1.0 - alpha)
    decided_needed = (z * 0.5 / (share - 0.5)) ** 2
    return max(evidence.sessions,
               math.ceil(decided_needed * evidence.sessions / decided))
