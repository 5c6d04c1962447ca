"""Which queue policy ships gains soonest, when a new candidate arrives every night while
a canary is still undecided? (issue 24, part 5)

A stylised closed loop, with the measured figures of SciFact's (BENCHMARKS.md):
`--sessions` interleaved pool-query sessions a day, of which `--decided` favour one side,
and candidates whose true win share over the champion is `--first` (the night-1
candidate's, measured) until one is promoted, then `--next` (a smaller step from the new
champion). Each night, every canary is read with the judge's sequential test (the same
boundaries), and the night's candidate meets the queue policy:

- wait while on track (the default, judge.on_track): one slot; the newcomer replaces the
  canary unless users are warming to it and, at its win share so far, it would decide
  within `patience` times the decided sessions it has had;
- wait while ahead: the same with no patience limit: replaced only if its evidence does
  not favour it (log evidence at most 0);
- replace nightly: one slot, always the newest;
- race two, replacing the weakest if not ahead / nightly: two slots sharing the sessions.

After a promotion the watch takes its share of the sessions for `--watch` sessions.

    .venv/bin/python bench/canary_queue.py --histories 300
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass

from embedloop.judge.evidence import InterleavedComparison, OnlineRule, Source, read_interleaving
from embedloop.judge.policy import QUEUE_PATIENCE, on_track
from embedloop.judge.sequential import log_evidence


@dataclass
class Canary:
    share: float  # true win share over the champion
    wins: int = 0
    losses: int = 0

    @property
    def evidence(self) -> float:
        return log_evidence(self.wins, self.losses)


def keeps_place(canary: Canary, patience: float, alpha: float) -> bool:
    """Whether a running canary keeps its slot: judge.on_track with this patience (0:
    only that its evidence favours it)."""
    if patience <= 0:
        return canary.evidence > 0
    reading = read_interleaving(Source.CANARY, canary.wins + canary.losses, canary.wins,
                                canary.losses, OnlineRule(alpha))
    assert isinstance(reading.numbers, InterleavedComparison)
    return on_track(reading.numbers, alpha, patience)


def history(slots: int, replace_always: bool, args: argparse.Namespace,
            rng: random.Random, patience: float = 0.0) -> list[tuple[int, float]]:
    """(day, the promoted canary's true win share) per promotion, over `args.days` days."""
    alpha, harm = args.alpha, args.harm_alpha
    canaries: list[Canary] = []
    watch_left, generation, promoted_on = 0, 0, []
    for day in range(1, args.days + 1):
        active = len(canaries) + (watch_left > 0)
        per = args.sessions // active if active else 0
        for canary in canaries:
            for _ in range(per):
                if rng.random() < args.decided:
                    if rng.random() < canary.share:
                        canary.wins += 1
                    else:
                        canary.losses += 1
        watch_left = max(0, watch_left - per)
        for canary in list(canaries):  # the night's reading
            if canary.wins > canary.losses and canary.evidence >= math.log(1 / alpha):
                promoted_on.append((day, canary.share))
                generation += 1
                canaries, watch_left = [], args.watch
                break
            if canary.losses > canary.wins and log_evidence(
                    canary.losses, canary.wins) >= math.log(1 / harm):
                canaries.remove(canary)
        mean = (args.first if generation == 0 else args.next) + args.trend * day
        newcomer = Canary(min(0.99, max(0.01, rng.gauss(mean, args.spread))))
        if len(canaries) < slots:
            canaries.append(newcomer)
            continue
        weakest = min(canaries, key=lambda c: c.evidence)
        if replace_always or not keeps_place(weakest, patience, alpha):
            canaries[canaries.index(weakest)] = newcomer
    return promoted_on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--sessions", type=int, default=647,
                    help="interleaved sessions a day: every session of the ~162 pool "
                         "queries of SciFact's 809 train queries, 4 a day")
    ap.add_argument("--decided", type=float, default=0.156,
                    help="share of sessions whose clicks favour one side (measured: v1 "
                         "against the night-1 candidate)")
    ap.add_argument("--first", type=float, default=0.579,
                    help="the night-1 candidate's win share (measured)")
    ap.add_argument("--next", type=float, default=0.53,
                    help="a candidate's win share over a champion promoted from the last")
    ap.add_argument("--spread", type=float, default=0.02,
                    help="candidates' win shares vary around the mean by this much (sd)")
    ap.add_argument("--trend", type=float, default=0.0,
                    help="each night's candidates are this much better (win share) than the "
                         "last night's: they train on more data")
    ap.add_argument("--watch", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.025)
    ap.add_argument("--harm-alpha", type=float, default=0.05)
    ap.add_argument("--histories", type=int, default=300)
    args = ap.parse_args()

    policies = [("wait while ahead", 1, False, 0.0), ("replace nightly", 1, True, 0.0),
                ("race two, replace the weakest if not ahead", 2, False, 0.0),
                ("race two, replace the weakest nightly", 2, True, 0.0),
                *[(f"wait while on track, patience {p:g}"
                   + (" (default)" if p == QUEUE_PATIENCE else ""), 1, False, p)
                  for p in (3, 5, 10)]]
    print(f"{args.histories} histories of {args.days} days; {args.sessions} sessions a day, "
          f"{args.decided:.1%} decided; win share {args.first} before the first promotion, "
          f"{args.next} after; watch {args.watch} sessions\n")
    print(f"| policy | first promotion: median day | by day 7 | by day {args.days} | a second "
          f"by day {args.days} | promotions (mean) | gain shipped: the promoted canaries' win "
          f"shares above 1/2, summed (mean) |")
    print("|---|---|---|---|---|---|---|")
    for name, slots, always, patience in policies:
        runs = [history(slots, always, args, random.Random(seed), patience)
                for seed in range(args.histories)]
        first = [r[0][0] if r else math.inf for r in runs]
        median = statistics.median(first)
        print(f"| {name} | {median if median != math.inf else 'none'} | "
              f"{sum(f <= 7 for f in first) / len(runs):.0%} | "
              f"{sum(f <= args.days for f in first) / len(runs):.0%} | "
              f"{sum(len(r) >= 2 for r in runs) / len(runs):.0%} | "
              f"{statistics.mean(len(r) for r in runs):.2f} | "
              f"{statistics.mean(sum(s - 0.5 for _, s in r) for r in runs):.3f} |")


if __name__ == "__main__":
    main()
