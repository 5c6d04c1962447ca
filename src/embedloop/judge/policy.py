"""The judge: one place that turns evidence (evidence.py) into what happens to a
candidate, and that owns the error budget and the record of every reading.

Offline evidence screens; users decide:

- A candidate that is broken, or credibly harmful on any offline source (pool, guard
  set, the team's judged queries), is rejected: it never reaches users.
- A candidate the pool shows credibly better is promoted at once, unless the guard set
  disagrees (its whole-ranking score lower by more than the margin): conflicting
  offline evidence goes to the users.
- Any other candidate goes to the interleaved canary, which promotes it when users
  credibly prefer it, stops it when they credibly prefer the champion, and ends it
  undecided at `canary_max_sessions`.
- After every promotion the new champion is watched: interleaved with the previous one,
  a credible loss rolls it back.

The error budget is per candidate. Whatever happens to it, a candidate that is no
better than the champion is promoted with probability at most `alpha`: at most half of
it through its one offline look, at most half through its canary, however often the
canary is read (the sequential test is valid at every session). With no canary to run
(`canary_share` 0) the offline look may spend all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from embedloop.judge.evidence import (
    Finding,
    InterleavedComparison,
    OfflineComparison,
    OfflineRule,
    OnlineRule,
    Source,
    Verdict,
)
from embedloop.judge.sequential import decided_to_cross

if TYPE_CHECKING:
    from embedloop.config import Settings
    from embedloop.production.champion import Rollback


class Action(StrEnum):
    PROMOTE = "promote"  # offline superiority, or a canary users credibly prefer
    CANARY = "canary"  # no harm found offline: the users decide
    KEEP = "keep"  # no harm, no credible gain, and no canary to run
    REJECT = "reject"  # broken or credibly harmful: never shown to users
    CONTINUE = "continue"  # online: keep collecting sessions
    STOP = "stop"  # the canary ends without promotion
    ROLLBACK = "rollback"  # the watched champion lost: the previous one comes back
    PASS = "pass"  # the watched champion held


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    verdicts: tuple[Verdict, ...] = ()

    def verdict(self, source: Source) -> Verdict | None:
        return next((v for v in self.verdicts if v.source == source), None)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for verdict in self.verdicts:
            out.update(verdict.metrics())
        return out


@dataclass(frozen=True)
class Policy:
    primary_metric: str = "ndcg@10"
    min_improvement: float = 0.005
    min_queries: int = 5
    alpha: float = 0.05  # false-promotion budget per candidate; 1.0: significance off
    harm_alpha: float = 0.05  # how sure a harm finding must be
    harm_margin: float = 0.01  # offline, a loss up to this much is not harm
    canary: bool = True  # users' evidence can be collected (canary_share > 0)
    canary_max_sessions: int = 20_000
    watch_sessions: int = 1_000

    @property
    def offline_alpha(self) -> float:
        if self.alpha >= 1.0:
            return 1.0
        return self.alpha / 2 if self.canary else self.alpha

    @property
    def online_alpha(self) -> float:
        return self.alpha / 2

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.primary_metric, settings.min_improvement,
                   settings.min_holdout_queries, settings.significance_alpha,
                   settings.harm_alpha, settings.harm_margin, settings.canary_share > 0,
                   settings.canary_max_sessions, settings.watch_sessions)

    def offline_rule(self) -> OfflineRule:
        return OfflineRule(self.primary_metric, self.min_improvement, self.min_queries,
                           self.offline_alpha, self.harm_alpha, self.harm_margin)

    def online_rule(self, source: Source) -> OnlineRule:
        limit = self.canary_max_sessions if source == Source.CANARY else self.watch_sessions
        return OnlineRule(self.online_alpha, self.harm_alpha, limit)


# A canary keeps its slot while it would decide within this many times the decided
# sessions it has had (BENCHMARKS.md: the queue; 3 to 10 ship about the same).
QUEUE_PATIENCE = 5.0


def on_track(reading: InterleavedComparison, alpha: float,
             patience: float = QUEUE_PATIENCE) -> bool:
    """Whether a running canary keeps its place against a newcomer: users are warming to
    it (its evidence favours it) and, at the win share seen so far, it would cross the
    boundary within `patience` times the decided sessions it has had. A canary with no
    sessions yet, or one crawling towards a decision weeks away, gives way: the newer
    candidate trained on more data."""
    decided = reading.wins + reading.losses
    if reading.evidence <= 0 or not decided:
        return False
    return decided_to_cross(reading.wins / decided, alpha) <= patience * decided


class EvidenceLog(Protocol):
    """Where the judge keeps each reading it made, per candidate and source."""

    def record(self, candidate: str, source: str, entry: dict[str, Any]) -> int:
        """Append `entry`; returns how many readings that candidate's source now has."""
        ...


class Judge:
    """Decides, and records each reading before anything acts on it (a crash can only
    leave one reading too many on record, never an unrecorded decision)."""

    def __init__(self, policy: Policy, log: EvidenceLog) -> None:
        self.policy = policy
        self.log = log

    def offline(self, candidate: str, verdicts: Sequence[Verdict]) -> Judgement:
        """A new candidate, from the offline sources' verdicts (`candidate` names it in
        the record: the run that trained it)."""
        verdicts = tuple(verdicts)
        self.log.record(candidate, "offline", {
            "alpha": self.policy.offline_alpha,
            "findings": {v.source.value: v.finding.value for v in verdicts}})
        lines = "; ".join(v.reason for v in verdicts)
        blocking = [v for v in verdicts if v.finding in (Finding.BROKEN, Finding.HARM)]
        if blocking:
            why = " and ".join(f"{v.finding} on the {v.source}" for v in blocking)
            return Judgement(Action.REJECT, f"rejected ({why}), never shown to users: "
                                            f"{lines}", verdicts)
        pool = next((v for v in verdicts if v.source == Source.POOL), None)
        guard = next((v for v in verdicts if v.source == Source.GUARD), None)
        disagrees = (guard is not None and isinstance(guard.numbers, OfflineComparison)
                     and guard.numbers.delta < -self.policy.harm_margin)
        if pool is not None and pool.finding == Finding.SUPERIOR and not disagrees:
            return Judgement(Action.PROMOTE, f"credibly better offline: {lines}", verdicts)
        if pool is not None and pool.finding == Finding.SAME:
            return Judgement(Action.KEEP, f"nothing for users to judge: {lines}", verdicts)
        if self.policy.canary:
            why = ("better on the pool, but the guard set disagrees (worse over the whole "
                   "ranking by more than the margin)" if disagrees and pool is not None
                   and pool.finding == Finding.SUPERIOR else "no harm found offline")
            return Judgement(Action.CANARY, f"{why}, so users decide (interleaved canary): "
                                            f"{lines}", verdicts)
        return Judgement(Action.KEEP, f"not credibly better, and no canary to let users "
                                      f"decide (canary_share 0): {lines}", verdicts)

    def canary(self, version: str, verdict: Verdict) -> Judgement:
        """The running canary, from its interleaved sessions so far."""
        self._record(version, verdict)
        action = {Finding.SUPERIOR: Action.PROMOTE, Finding.HARM: Action.STOP,
                  Finding.EXPIRED: Action.STOP}.get(verdict.finding, Action.CONTINUE)
        return Judgement(action, verdict.reason, (verdict,))

    def watch(self, version: str, verdict: Verdict) -> Judgement:
        """A new champion on watch, from its interleaved sessions against the previous."""
        self._record(version, verdict)
        action = {Finding.HARM: Action.ROLLBACK, Finding.SUPERIOR: Action.PASS,
                  Finding.EXPIRED: Action.PASS}.get(verdict.finding, Action.CONTINUE)
        return Judgement(action, verdict.reason, (verdict,))

    def _record(self, version: str, verdict: Verdict) -> None:
        self.log.record(version, verdict.source.value, {
            "finding": verdict.finding.value, **verdict.metrics()})


@dataclass(frozen=True)
class Comparison:
    """One interleaved comparison judged by this run."""

    source: Source  # canary or watch
    challenger: str  # the canary, or the champion on watch
    opponent: str  # the champion, or the previous one
    judgement: Judgement
    votes: list[int] = field(default_factory=list)  # per counted session, oldest first


@dataclass(frozen=True)
class UsersEvidence:
    comparisons: list[Comparison] = field(default_factory=list)
    promoted: str | None = None  # a canary this run promoted
    rolled_back: Rollback | None = None  # the watch's rollback

    def reading(self, version: str) -> InterleavedComparison | None:
        """Where canary `version` stood when this run judged it."""
        for c in self.comparisons:
            if c.source == Source.CANARY and c.challenger == version:
                numbers = c.judgement.verdicts[0].numbers
                if isinstance(numbers, InterleavedComparison):
                    return numbers
        return None
