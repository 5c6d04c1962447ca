"""Is a per-query improvement real? Paired tests over per-query metric deltas. Pure.

Both models are scored on the same queries, so the unit of evidence is the
per-query difference d_i = candidate_i - incumbent_i.

- `randomization_p_value`: one-sided paired sign-flip test. Under "no difference" each
  d_i is as likely to have had the opposite sign; p is the share of sign patterns whose
  mean is at least the observed mean. Exact (all 2^n patterns) for n <= 16, else a
  seeded Monte Carlo with the observed pattern counted (so p is never 0).
- `bootstrap_ci`: percentile confidence interval of the mean delta from resampling
  queries with replacement (seeded, so the same data gives the same decision).
"""

from __future__ import annotations

import itertools

import numpy as np

EXACT_LIMIT = 16
CHUNK = 20_000


def randomization_p_value(deltas: np.ndarray, samples: int = 20_000, seed: int = 0) -> float:
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        return 1.0
    observed = d.mean()
    tolerance = 1e-12  # float noise must not make an equal mean look smaller
    if d.size <= EXACT_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        means = (signs * d).mean(axis=1)  # (2^n,)
        return float(np.mean(means >= observed - tolerance))
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, samples, CHUNK):  # chunks: many samples without much memory
        signs = rng.choice((-1.0, 1.0), size=(min(CHUNK, samples - start), d.size))
        at_least += int(np.sum((signs * d).mean(axis=1) >= observed - tolerance))
    return float((at_least + 1) / (samples + 1))


def samples_to_resolve(threshold: float, minimum: int = 20_000) -> int:
    """Enough sign patterns that a Monte Carlo p-value can fall below `threshold` with
    room to spare (its floor is 1 / (samples + 1)), capped to keep a look fast."""
    return int(min(max(minimum, 50 / max(threshold, 1e-12)), 5_000_000))


def bootstrap_ci(deltas: np.ndarray, confidence: float = 0.95, samples: int = 5_000,
                 seed: int = 0) -> tuple[float, float]:
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, d.size, size=(samples, d.size))
    means = d[picks].mean(axis=1)  # (samples,)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
