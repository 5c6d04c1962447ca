"""Which queue policy ships gains soonest, when a new candidate arrives every night while
a canary is still undecided? (issue 24, part 5)

A stylised closed loop, with the measured figures of SciFact's (BENCHMARKS.md):
`--sessions` interleaved pool-query sessions a day, of which `--decided` favour one side,
and candidates whose true win share over the champion is `--first` (the night-1
candidate's, measured) until one is promoted, then `--next` (a smaller step from the new
champion). Each night, every canary is read with the judge's sequential test (the same
boundaries), and the night's candidate meets the queue policy:

- wait while ahead: one slot; the newcomer replaces the canary only if its evidence does
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

from embedloop.sequential import log_evidence


@dataclass
class Canary:
    share: float  # true win share over the champion
    wins: int = 0
    losses: int = 0

    @property
    def evidence(self) -> float:
        return log_evidence(self.wins, self.losses)


def history(slots: int, replace_always: bool, args: argparse.Namespace,
            rng: random.Random) -> list[int]:
    """The days on which a canary was promoted, over `args.days` days."""
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
                promoted_on.append(day)
                generation += 1
                canaries, watch_left = [], args.watch
                break
            if canary.losses > canary.wins and log_evidence(
                    canary.losses, canary.wins) >= math.log(1 / harm):
                canaries.remove(canary)
        mean = args.first if generation == 0 else args.next
        newcomer = Canary(min(0.99, max(0.01, rng.gauss(mean, args.spread))))
        if len(canaries) < slots:
            canaries.append(newcomer)
            continue
        weakest = min(canaries, key=lambda c: c.evidence)
        if replace_always or weakest.evidence <= 0:
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
    ap.add_argument("--spread", type=float, default=0.01)
    ap.add_argument("--watch", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.025)
    ap.add_argument("--harm-alpha", type=float, default=0.05)
    ap.add_argument("--histories", type=int, default=300)
    args = ap.parse_args()

    policies = [("wait while ahead (default)", 1, False), ("replace nightly", 1, True),
                ("race two, replace the weakest if not ahead", 2, False),
                ("race two, replace the weakest nightly", 2, True)]
    print(f"{args.histories} histories of {args.days} days; {args.sessions} sessions a day, "
          f"{args.decided:.1%} decided; win share {args.first} before the first promotion, "
          f"{args.next} after; watch {args.watch} sessions\n")
    print("| policy | first promotion: median day | by day 7 | by day 14 | a second by "
          "day 14 | promotions in 14 days (mean) |")
    print("|---|---|---|---|---|---|")
    for name, slots, always in policies:
        runs = [history(slots, always, args, random.Random(seed))
                for seed in range(args.histories)]
        first = [r[0] if r else math.inf for r in runs]
        median = statistics.median(first)
        print(f"| {name} | {median if median != math.inf else 'none'} | "
              f"{sum(f <= 7 for f in first) / len(runs):.0%} | "
              f"{sum(f <= 14 for f in first) / len(runs):.0%} | "
              f"{sum(len(r) >= 2 for r in runs) / len(runs):.0%} | "
              f"{statistics.mean(len(r) for r in runs):.2f} |")


if __name__ == "__main__":
    main()
