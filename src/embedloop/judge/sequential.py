"""An always-valid test for interleaved sessions: a mixture sequential probability ratio
test (mSPRT; Robbins 1970, Johari et al. 2017) on the share of decided sessions each
ranker wins. Pure.

A decided session is one whose clicks favoured one side (interleaving.py). If neither
ranker is preferred, each decided session is a fair coin: wins ~ Binomial(n, 1/2). The
evidence for "the candidate is preferred" is the likelihood ratio of the data under a
prior over win shares above 1/2 against the share 1/2 itself:

    L+(W, L) = integral over p > 1/2 of p^W (1 - p)^L prior(p) dp  /  (1/2)^(W + L)

For any true share p <= 1/2 it is a nonnegative supermartingale with mean at most 1, so
by Ville's inequality the chance that it EVER reaches 1/alpha is at most alpha: the test
may be read after every session, every night, for as long as the canary runs, and a
candidate that is no better is still declared better with probability at most alpha.
No look counting, no alpha spending across readings. The evidence for "the champion is
preferred" is the mirror image (shares below 1/2), for the harm stop.

The prior is a Beta(a, a) cut at 1/2: centred on no preference, a = 50 puts its spread
(sd 0.05) where a champion and its fine-tuned successor differ (53-64% of decided
sessions, BENCHMARKS.md). By simulation (bench/canary_sim.py) the choice of a between 5
and 200 moves the sessions a decision takes by less than a third.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy.special import betaincc, betaln

PRIOR_A = 50.0


def log_evidence(wins: int, losses: int, prior_a: float = PRIOR_A) -> float:
    """log L+: the evidence that the side with `wins` is preferred (its share above 1/2)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts cannot be negative: {wins}, {losses}")
    a = prior_a
    upper = float(betaincc(wins + a, losses + a, 0.5))  # posterior mass above 1/2
    if upper <= 0.0:
        return -math.inf
    return (float(betaln(wins + a, losses + a) - betaln(a, a)) + math.log(2.0)
            + math.log(upper) + (wins + losses) * math.log(2.0))


@lru_cache(maxsize=65_536)
def wins_needed(decided: int, alpha: float, prior_a: float = PRIOR_A) -> int | None:
    """The fewest wins among `decided` sessions whose evidence reaches log(1/alpha);
    None if even winning all of them would not (too few sessions yet)."""
    threshold = math.log(1.0 / alpha)
    if log_evidence(decided, 0, prior_a) < threshold:
        return None
    low, high = decided // 2, decided  # evidence grows with wins at fixed n
    while low < high:
        mid = (low + high) // 2
        if log_evidence(mid, decided - mid, prior_a) >= threshold:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass(frozen=True)
class SequentialReading:
    """Where one interleaved comparison stands: its counts and both evidences against
    their boundaries."""

    wins: int  # sessions the challenger (canary, or the new champion on watch) won
    losses: int  # sessions its opponent won
    alpha: float  # the challenger is declared better when evidence >= log(1/alpha)
    harm_alpha: float  # and worse when harm evidence >= log(1/harm_alpha)
    prior_a: float = PRIOR_A

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def win_share(self) -> float:
        return self.wins / self.decided if self.decided else math.nan

    @property
    def evidence(self) -> float:
        return log_evidence(self.wins, self.losses, self.prior_a)

    @property
    def harm_evidence(self) -> float:
        return log_evidence(self.losses, self.wins, self.prior_a)

    @property
    def boundary(self) -> float:
        return math.log(1.0 / self.alpha)

    @property
    def harm_boundary(self) -> float:
        return math.log(1.0 / self.harm_alpha)

    @property
    def better(self) -> bool:
        return self.wins > self.losses and self.evidence >= self.boundary

    @property
    def worse(self) -> bool:
        return self.losses > self.wins and self.harm_evidence >= self.harm_boundary

    @property
    def wins_needed(self) -> int | None:
        """At this many decided sessions, the wins that would cross the boundary."""
        return wins_needed(self.decided, self.alpha, self.prior_a)


def boundary_curve(max_decided: int, alpha: float, prior_a: float = PRIOR_A,
                   points: int = 200) -> list[tuple[int, int]]:
    """(decided sessions, wins minus losses needed there) along the way, for a plot: the
    line the evidence must cross. Points where no count would do are left out."""
    step = max(1, max_decided // points)
    out = []
    for n in range(step, max_decided + 1, step):
        needed = wins_needed(n, alpha, prior_a)
        if needed is not None:
            out.append((n, 2 * needed - n))
    return out


def decided_to_cross(share: float, alpha: float, prior_a: float = PRIOR_A,
                     limit: int = 10_000_000) -> float:
    """About how many decided sessions a comparison whose win share stays at `share` needs
    before its evidence reaches log(1/alpha); infinite when the share is not above 1/2
    (or the limit would not do)."""
    if share <= 0.5:
        return math.inf
    threshold = math.log(1.0 / alpha)

    def crosses(n: int) -> bool:
        wins = round(share * n)
        return log_evidence(wins, n - wins, prior_a) >= threshold

    high = 16
    while not crosses(high):
        high *= 2
        if high > limit:
            return math.inf
    low = high // 2
    while low < high:
        mid = (low + high) // 2
        if crosses(mid):
            high = mid
        else:
            low = mid + 1
    return float(low)
