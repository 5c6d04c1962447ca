"""How the recipe picks its mixing weight (pure: per-query scores in, weight and
reason out)."""

from __future__ import annotations

import numpy as np

from embedloop.learn.training import choose_mixing_weight

RNG = np.random.default_rng(0)
PARENT = RNG.uniform(0.3, 1.0, size=80)


def test_a_fine_tune_not_credibly_worse_is_kept_whole() -> None:
    """A small loss on the tune queries is within their noise: the cycle's gain (which
    they cannot resolve) is kept, not traded for it."""
    noise = RNG.normal(0, 0.1, size=80)
    chosen = choose_mixing_weight({0.0: PARENT, 0.5: PARENT + noise / 2 - 0.002,
                                   1.0: PARENT + noise - 0.005})
    assert chosen.weight == 1.0 and chosen.p_worse[1.0] > 0.05
    assert chosen.why.startswith("all of it") and "80 tune queries" in chosen.why


def test_a_drifting_fine_tune_falls_back_to_the_largest_share_that_holds() -> None:
    drift = RNG.uniform(0.05, 0.15, size=80)
    chosen = choose_mixing_weight({0.0: PARENT, 0.2: PARENT + RNG.normal(0, 0.05, size=80),
                                   0.6: PARENT - drift * 0.6, 1.0: PARENT - drift})
    assert chosen.weight == 0.2 and chosen.p_worse[0.6] < 0.05 <= chosen.p_worse[0.2]
    assert chosen.why.startswith("0.2 of it")


def test_a_fine_tune_that_is_worse_at_every_share_leaves_the_parent() -> None:
    chosen = choose_mixing_weight({0.0: PARENT, 0.5: PARENT - 0.05, 1.0: PARENT - 0.1})
    assert chosen.weight == 0.0 and "the candidate is the parent" in chosen.why
    assert list(chosen.scores) == [0.0, 0.5, 1.0]


def test_a_loss_beyond_the_harm_margin_is_not_kept_even_when_noise_hides_it() -> None:
    """Too few tune queries to make a 2-point loss credible: the margin still holds it."""
    noisy = PARENT[:12] + RNG.normal(0, 0.3, size=12)
    shift = noisy.mean() - PARENT[:12].mean() + 0.02  # the mix loses 0.02 on average
    chosen = choose_mixing_weight({0.0: PARENT[:12], 0.5: PARENT[:12] + RNG.normal(0, 0.01, 12),
                                   1.0: noisy - shift}, alpha=0.05, margin=0.01)
    assert chosen.p_worse[1.0] >= 0.05 and chosen.weight == 0.5
