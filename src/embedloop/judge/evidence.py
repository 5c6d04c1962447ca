"""The evidence contract: every source of evidence about a candidate says what it found
in one typed `Verdict`, and the judge (policy.py) decides from those alone. Pure.

Sources, and what each can say:

- `pool`, offline: the evaluation pool (queries never trained on, labelled by clicks).
  Harm is read on **condensed lists**: each ranking keeps only the documents users were
  shown for that query. A click log labels only what the ranker that served it showed,
  so over the full ranking a document nobody was shown counts as irrelevant, and a
  candidate that lifts a relevant one from rank 30 is blamed instead of credited; a
  deployment's logs come from its champion, so the full ranking favours the champion
  (BENCHMARKS.md: a candidate +3.4 test points better read 2.4 points worse). Condensed
  lists neither credit nor blame a document nobody saw. Superiority is still read over
  the full ranking: its bias can only favour the ranker that logged the clicks, so a
  candidate shown better there beat that ranker on its own labels.
- `guard`, offline: the frozen guard set, read the same way (harm only).
- `judged`, offline: the team's own judged queries (`judged_queries`), over the full
  ranking (real judgements, complete as far as the team judged); harm only.
- `sanity`: broken candidates (non-finite vectors, every query mapped to about the same
  vector) never reach users.
- `canary`, online: the candidate interleaved with the champion on sessions of queries
  no candidate trained on; an always-valid sequential test (sequential.py).
- `watch`, online: after a promotion, the new champion interleaved with the previous one.

Each verdict carries its numbers as a typed record whose field names are the MLflow
metric keys (`pool.delta`, `canary.evidence`, ...): `metrics()` writes them and
`from_metrics()` reads them back (history.py), so no key is spelled twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Any, ClassVar, Self

import numpy as np

from embedloop.judge.evaluation import EvalReport
from embedloop.judge.sequential import SequentialReading
from embedloop.judge.significance import bootstrap_ci, randomization_p_value, samples_to_resolve

# Means of per-query scores carry float noise (0.51 - 0.50 = 0.010000000000000009): a
# difference this small is no difference.
EPSILON = 1e-9


class Source(StrEnum):
    POOL = "pool"
    GUARD = "guard"
    JUDGED = "judged"
    SANITY = "sanity"
    CANARY = "canary"
    WATCH = "watch"


class Finding(StrEnum):
    BROKEN = "broken"  # the candidate does not work: never shown to users
    HARM = "harm"  # credibly worse (offline: beyond the margin; online: users prefer less)
    SUPERIOR = "superior"  # credibly better
    NO_HARM = "no harm"  # offline: no credible harm (the canary may decide)
    UNDECIDED = "undecided"  # online: keep collecting sessions
    EXPIRED = "expired"  # online: the session limit came first
    TOO_LITTLE = "too little"  # too few queries or sessions to read anything
    SAME = "same"  # offline: the candidate ranks every query's top 10 as the incumbent does

    @property
    def code(self) -> float:
        """The finding as a number, for an MLflow metric chart."""
        return float(list(Finding).index(self))


@dataclass(frozen=True)
class Numbers:
    """A verdict's numbers. Field names are metric keys under the source's prefix."""

    def metrics(self, source: Source | str) -> dict[str, float]:
        """{"<source>.<field>": value}; `source` may be a longer prefix ("canary.v3")."""
        return {f"{source}.{f.name}": float(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_metrics(cls, source: Source | str, metrics: Mapping[str, float]) -> Self | None:
        """The record `metrics()` wrote for `source`, or None if that run has none."""
        try:
            values = {f.name: metrics[f"{source}.{f.name}"] for f in dataclasses.fields(cls)}
        except KeyError:
            return None
        return cls(**{f.name: _typed(f.type, values[f.name]) for f in dataclasses.fields(cls)})


def _typed(kind: Any, value: float) -> Any:
    return int(value) if kind in (int, "int") else float(value)


@dataclass(frozen=True)
class OfflineComparison(Numbers):
    """Candidate and incumbent on the same judged queries, one primary metric."""

    queries: int
    candidate: float  # over the full ranking (unshown documents count as irrelevant)
    incumbent: float
    condensed_candidate: float  # over the documents users were shown only
    condensed_incumbent: float
    p_better: float  # one-sided paired randomization test, full ranking
    alpha: float  # a gain is credible when p_better is below this (1.0: significance off)
    ci_low: float  # bootstrap confidence interval of the full-ranking gain
    ci_high: float
    harm_bound: float  # upper confidence bound of the condensed gain
    p_harm: float  # chance of a condensed loss this large if it were no worse than -margin
    margin: float  # a loss up to this much is not harm
    queries_better: int
    queries_worse: int
    queries_reordered: int  # queries whose top 10 the candidate ranks otherwise

    @property
    def delta(self) -> float:
        return self.candidate - self.incumbent

    @property
    def condensed_delta(self) -> float:
        return self.condensed_candidate - self.condensed_incumbent


@dataclass(frozen=True)
class SanityCheck(Numbers):
    finite: int  # 1 if every vector the candidate made is finite
    spread: float  # 1 - mean cosine between its vectors of different queries
    incumbent_spread: float


@dataclass(frozen=True)
class InterleavedComparison(Numbers):
    """A challenger (the canary, or a new champion on watch) against its opponent (the
    champion, or the previous one) on interleaved sessions of queries neither trained on."""

    sessions: int  # interleaved sessions counted
    wins: int  # decided for the challenger
    losses: int  # decided for the opponent
    evidence: float  # log likelihood ratio for "the challenger is preferred"
    boundary: float  # it is, credibly, once evidence reaches this: log(1 / alpha)
    harm_evidence: float  # the same for "the opponent is preferred"
    harm_boundary: float
    wins_needed: int  # at this many decided sessions, the wins that would cross (-1: none)
    max_sessions: int  # the limit: undecided then, the comparison ends
    uncounted: int  # interleaved sessions of queries the challenger trained on

    @property
    def win_share(self) -> float:
        decided = self.wins + self.losses
        return self.wins / decided if decided else math.nan


@dataclass(frozen=True)
class Verdict:
    source: Source
    finding: Finding
    reason: str
    numbers: Numbers | None = None

    def metrics(self) -> dict[str, float]:
        out = {f"{self.source}.finding": self.finding.code}
        if self.numbers is not None:
            out.update(self.numbers.metrics(self.source))
        return out


# -- offline --------------------------------------------------------------------------
@dataclass(frozen=True)
class OfflineRule:
    """What an offline comparison needs to call a gain credible or a loss harm."""

    primary_metric: str = "ndcg@10"
    min_improvement: float = 0.005  # a gain must exceed this (absolute) to count
    min_queries: int = 5
    alpha: float = 0.025  # for superiority; 1.0 or more: significance off
    harm_alpha: float = 0.05
    harm_margin: float = 0.01
    confidence: float = 0.95


def paired_deltas(candidate: EvalReport, incumbent: EvalReport, metric: str) -> np.ndarray:
    """Per-query candidate - incumbent, matched by query; (n_queries,)."""
    merged = candidate.per_query.merge(incumbent.per_query, on="query", suffixes=("_c", "_i"))
    return (merged[f"{metric}_c"] - merged[f"{metric}_i"]).to_numpy(dtype=np.float64)


def queries_needed(deltas: np.ndarray, alpha: float) -> int:
    """About how many queries a gain like this one needs before a one-sided test at
    `alpha` calls it credible (normal approximation: the z-score grows with sqrt(n))."""
    n, mean, sd = len(deltas), float(np.mean(deltas)), float(np.std(deltas, ddof=1))
    if n < 2 or mean <= 0 or sd == 0:
        return n
    z_needed = NormalDist().inv_cdf(1.0 - alpha)
    return max(n, math.ceil((z_needed * sd / mean) ** 2))


def compare_offline(source: Source, full: tuple[EvalReport, EvalReport],
                    condensed: tuple[EvalReport, EvalReport], rule: OfflineRule) -> Verdict:
    """Candidate against incumbent on one query set: `full` over whole rankings,
    `condensed` over the documents users were shown (the same reports for judged
    queries, whose labels do not come from a ranker).

    HARM: the condensed gain is credibly below -margin. SUPERIOR (told for the pool;
    only its superiority can promote): the full-ranking gain exceeds min_improvement,
    credibly at `rule.alpha`. NO_HARM otherwise."""
    metric = rule.primary_metric
    (cand, inc), (ccand, cinc) = full, condensed
    same = set(cand.per_query["query"]) == set(inc.per_query["query"])
    if not same or cand.n_queries != inc.n_queries:
        return Verdict(source, Finding.TOO_LITTLE,
                       f"{source}: candidate and incumbent were not scored on the same queries")
    n = cand.n_queries
    if n < rule.min_queries:
        return Verdict(source, Finding.TOO_LITTLE,
                       f"{source}: only {n} queries; at least {rule.min_queries} are needed "
                       f"to read anything (the pool grows with every batch)")
    deltas = paired_deltas(cand, inc, metric)
    shown = paired_deltas(ccand, cinc, metric)
    significance = rule.alpha < 1.0
    p_better = (randomization_p_value(deltas, samples=samples_to_resolve(rule.alpha))
                if significance else 0.0)
    # harm: is the condensed gain below -margin? The same sign-flip test, mirrored
    p_harm = randomization_p_value(-(shown + rule.harm_margin),
                                   samples=samples_to_resolve(rule.harm_alpha))
    low, high = bootstrap_ci(deltas, rule.confidence)
    harm_bound = bootstrap_ci(shown, 1.0 - 2.0 * rule.harm_alpha)[1]  # one-sided upper
    numbers = OfflineComparison(
        queries=n, candidate=cand.means[metric], incumbent=inc.means[metric],
        condensed_candidate=ccand.means[metric], condensed_incumbent=cinc.means[metric],
        p_better=p_better, alpha=rule.alpha, ci_low=low, ci_high=high,
        harm_bound=harm_bound, p_harm=p_harm, margin=rule.harm_margin,
        queries_better=int(np.sum(deltas > EPSILON)),
        queries_worse=int(np.sum(deltas < -EPSILON)),
        queries_reordered=sum(list(cand.rankings.get(q, []))[:10]
                              != list(inc.rankings.get(q, []))[:10]
                              for q in cand.per_query["query"]))
    delta = numbers.delta
    scores = (f"{metric} {numbers.incumbent:.4f} -> {numbers.candidate:.4f} ({delta:+.4f}) "
              f"on {n} {source} queries")
    shown_note = (f"over the documents users were shown {numbers.condensed_incumbent:.4f} -> "
                  f"{numbers.condensed_candidate:.4f} ({numbers.condensed_delta:+.4f})")
    if not numbers.queries_reordered and cand.rankings:
        return Verdict(source, Finding.SAME, f"{source}: the candidate ranks the top 10 of "
                       f"all {n} queries exactly as the incumbent does: {scores}", numbers)
    if p_harm < rule.harm_alpha:
        return Verdict(source, Finding.HARM,
                       f"{source}: credibly worse: {shown_note}, its {1 - rule.harm_alpha:.0%} "
                       f"upper bound {harm_bound:+.4f} below -{rule.harm_margin:g} "
                       f"(p={p_harm:.4f}); {scores}", numbers)
    evidence = (f"p={p_better:.4f}, {rule.confidence:.0%} CI [{low:+.4f}, {high:+.4f}], "
                f"{numbers.queries_better} queries better, {numbers.queries_worse} worse")
    if delta > rule.min_improvement + EPSILON and (not significance or p_better < rule.alpha):
        credibly = f"credibly ({evidence}, p below {rule.alpha:.4f})" if significance else \
            "(significance off)"
        return Verdict(source, Finding.SUPERIOR,
                       f"{source}: {scores}, more than the required {rule.min_improvement:g}, "
                       f"{credibly}; {shown_note}", numbers)
    if delta <= rule.min_improvement + EPSILON:
        if delta > EPSILON:
            how = f"improved by only {delta:+.4f}, not more than {rule.min_improvement:g}"
        elif delta >= -EPSILON:
            how = "tied (a tie keeps the incumbent)"
        else:
            how = f"worse by {-delta:.4f} over the full ranking"
        why = f"{source}: {how}: {scores}"
    else:
        needed = queries_needed(deltas, rule.alpha)
        why = (f"{source}: {scores} but not credibly ({evidence}; p must be below "
               f"{rule.alpha:.4f}: about {needed} queries would make a gain this size "
               f"credible)")
    return Verdict(source, Finding.NO_HARM,
                   f"{why}; no credible harm: {shown_note}, upper bound {harm_bound:+.4f} "
                   f"against a margin of -{rule.harm_margin:g}", numbers)


def check_sanity(candidate: np.ndarray, incumbent: np.ndarray,
                 min_spread_ratio: float = 0.25) -> Verdict:
    """Broken: a vector that is not finite, or queries that all look alike to the
    candidate (their spread, 1 - mean cosine between different queries' vectors, under
    `min_spread_ratio` of the incumbent's on the same queries: a collapsed model)."""
    finite = bool(np.isfinite(candidate).all())
    spread, inc_spread = _spread(candidate) if finite else math.nan, _spread(incumbent)
    numbers = SanityCheck(finite=int(finite), spread=spread, incumbent_spread=inc_spread)
    if not finite:
        return Verdict(Source.SANITY, Finding.BROKEN,
                       "sanity: the candidate makes non-finite vectors", numbers)
    if len(candidate) >= 2 and spread < min_spread_ratio * inc_spread:
        return Verdict(Source.SANITY, Finding.BROKEN,
                       f"sanity: the candidate maps different queries to nearly the same "
                       f"vector (spread {spread:.3f} against the incumbent's {inc_spread:.3f})",
                       numbers)
    return Verdict(Source.SANITY, Finding.NO_HARM,
                   f"sanity: vectors finite, spread {spread:.3f} (incumbent "
                   f"{inc_spread:.3f})", numbers)


def _spread(vectors: np.ndarray) -> float:
    """1 - the mean cosine between the vectors of different queries."""
    n = len(vectors)
    if n < 2:
        return math.nan
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    total = unit.sum(axis=0)
    mean_cosine = (float(total @ total) - n) / (n * (n - 1))  # off-diagonal mean
    return 1.0 - mean_cosine


# -- online -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineRule:
    alpha: float = 0.025  # the challenger is declared better at this error rate
    harm_alpha: float = 0.05
    max_sessions: int = 20_000

    CHALLENGERS: ClassVar[dict[Source, tuple[str, str]]] = {
        Source.CANARY: ("the candidate", "the champion"),
        Source.WATCH: ("the new champion", "the previous one")}


def read_interleaving(source: Source, sessions: int, wins: int, losses: int,
                      rule: OnlineRule, uncounted: int = 0) -> Verdict:
    """Where an interleaved comparison stands: SUPERIOR or HARM once the sequential test
    crosses a boundary (valid however often it is read), EXPIRED at `max_sessions`,
    else UNDECIDED."""
    reading = SequentialReading(wins, losses, rule.alpha, rule.harm_alpha)
    needed = reading.wins_needed
    numbers = InterleavedComparison(
        sessions=sessions, wins=wins, losses=losses, evidence=reading.evidence,
        boundary=reading.boundary, harm_evidence=reading.harm_evidence,
        harm_boundary=reading.harm_boundary, wins_needed=-1 if needed is None else needed,
        max_sessions=rule.max_sessions, uncounted=uncounted)
    challenger, opponent = OnlineRule.CHALLENGERS[source]
    tally = (f"{sessions} interleaved sessions: {challenger} won {wins}, {opponent} "
             f"{losses}, {sessions - wins - losses} undecided")
    if reading.decided:
        tally += f" ({reading.win_share:.0%} of decided)"
    where = (f"evidence {reading.evidence:.2f} of the {reading.boundary:.2f} needed, "
             f"harm evidence {reading.harm_evidence:.2f} of {reading.harm_boundary:.2f}")
    if reading.better:
        return Verdict(source, Finding.SUPERIOR, f"{source}: users prefer {challenger}, "
                       f"credibly: {tally}; {where}", numbers)
    if reading.worse:
        return Verdict(source, Finding.HARM, f"{source}: users prefer {opponent}, credibly: "
                       f"{tally}; {where}", numbers)
    if sessions >= rule.max_sessions:
        return Verdict(source, Finding.EXPIRED, f"{source}: no decision within "
                       f"{rule.max_sessions} sessions: {tally}; {where}", numbers)
    if sessions == 0:
        return Verdict(source, Finding.TOO_LITTLE, f"{source}: no interleaved sessions yet",
                       numbers)
    to_go = (f"at {reading.decided} decided sessions {challenger} would need {needed} wins"
             if needed is not None else "too few decided sessions for any count to cross")
    return Verdict(source, Finding.UNDECIDED, f"{source}: not decided yet: {tally}; {where}; "
                   f"{to_go}", numbers)
