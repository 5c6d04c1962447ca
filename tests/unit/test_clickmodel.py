from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedloop.learn.clickmodel import fit_position_based_model


def simulate_pbm(theta: dict[int, float], gamma: dict[tuple[str, str], float],
                 sessions: int, seed: int = 0) -> pd.DataFrame:
    """Impressions under the position-based model, documents shuffled per session so
    every pair is seen at many positions (the variation EM needs)."""
    rng = np.random.default_rng(seed)
    rows = []
    by_query: dict[str, list[str]] = {}
    for q, d in gamma:
        by_query.setdefault(q, []).append(d)
    for _ in range(sessions):
        for q, docs in by_query.items():
            for position, d in enumerate(rng.permutation(docs), start=1):
                clicked = rng.random() < theta[position] and rng.random() < gamma[(q, d)]
                rows.append({"qkey": q, "doc_id": d, "position": position, "clicked": clicked})
    return pd.DataFrame(rows)


def test_em_recovers_position_bias_and_relevance() -> None:
    theta = {k: 1.0 / k for k in range(1, 6)}
    gamma = {(f"q{i}", f"d{j}"): (0.9 if j == 0 else 0.06) for i in range(40) for j in range(5)}
    fitted = fit_position_based_model(simulate_pbm(theta, gamma, sessions=30))
    for k, true in theta.items():
        assert fitted.examination[k] == pytest.approx(true, abs=0.06)
    rel = fitted.relevance.set_index(["qkey", "doc_id"])["gamma"]
    relevant = rel[[k for k in rel.index if k[1] == "d0"]]
    noise = rel[[k for k in rel.index if k[1] != "d0"]]
    assert relevant.mean() == pytest.approx(0.9, abs=0.08)
    assert noise.mean() == pytest.approx(0.06, abs=0.04)
    assert relevant.min() > noise.max()  # the debiased scores separate the two


def test_one_click_on_a_pair_seen_once_is_not_certainty() -> None:
    frame = pd.DataFrame({"qkey": ["q"] * 4 + ["r"] * 4, "doc_id": list("abcd") * 2,
                          "position": [1, 2, 3, 4] * 2,
                          "clicked": [True, False, False, False, False, False, True, False]})
    gamma = fit_position_based_model(frame).relevance.set_index(["qkey", "doc_id"])["gamma"]
    assert gamma[("q", "a")] < 1.0  # smoothed towards the overall rate
    assert gamma[("q", "a")] > gamma[("q", "b")]
