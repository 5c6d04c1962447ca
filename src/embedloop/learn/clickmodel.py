"""Position bias, estimated from the logs themselves. Pure.

The position-based model (PBM): a result at position k is examined with probability
theta_k, and an examined result is clicked with probability gamma_qd, its attractiveness
(relevance) for the query. A click means examined and relevant; a skip is ambiguous
(not examined, or examined and not relevant), and EM splits it by the current estimates
(Chuklin, Markov & de Rijke, Click Models for Web Search, 2015, ch. 4):

    P(E=1, R=0 | C=0) = theta (1 - gamma) / (1 - theta gamma)
    P(E=0, R=1 | C=0) = (1 - theta) gamma / (1 - theta gamma)

theta_k is shared by every impression at position k, so it is estimated well even
when each (query, document) pair is seen only a few times; gamma_qd is the debiased
relevance used to keep clicks that are likely relevant and to pick negatives that
users examined and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClickModel:
    examination: dict[int, float]  # position -> theta, scaled so theta_1 = 1
    relevance: pd.DataFrame  # qkey, doc_id, impressions, clicks, gamma


def fit_position_based_model(impressions: pd.DataFrame, iterations: int = 100,
                             prior_strength: float = 1.0, tol: float = 1e-6) -> ClickModel:
    """EM for the PBM over rows with qkey, doc_id, position (int), clicked (bool).

    gamma is smoothed towards the overall click-relevance rate with `prior_strength`
    pseudo-impressions, so one lucky click on a pair seen once does not read as
    certain relevance.
    """
    frame = impressions[["qkey", "doc_id", "position", "clicked"]].copy()
    frame["position"] = frame["position"].astype(int)
    clicked = frame["clicked"].astype(bool).to_numpy()
    c = clicked.astype(np.float64)
    pos_codes, positions = pd.factorize(frame["position"], sort=True)
    pair_codes, pairs = pd.factorize(pd.MultiIndex.from_frame(frame[["qkey", "doc_id"]]))
    n_pos = np.bincount(pos_codes, minlength=len(positions)).astype(np.float64)
    n_pair = np.bincount(pair_codes, minlength=len(pairs)).astype(np.float64)

    theta = np.full(len(positions), 0.5)
    gamma = np.full(len(pairs), 0.5)
    prior = 0.5
    for _ in range(iterations):
        t, g = theta[pos_codes], gamma[pair_codes]  # (n_impressions,)
        skip = np.maximum(1.0 - t * g, 1e-12)
        examined_not_relevant = t * (1.0 - g) / skip
        relevant_not_examined = (1.0 - t) * g / skip
        new_theta = np.bincount(pos_codes, c + (1 - c) * examined_not_relevant,
                                minlength=len(positions)) / n_pos
        relevant = np.bincount(pair_codes, c + (1 - c) * relevant_not_examined,
                               minlength=len(pairs))
        prior = float(relevant.sum() / n_pair.sum())
        new_gamma = (relevant + prior_strength * prior) / (n_pair + prior_strength)
        done = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max()) < tol
        theta, gamma = np.clip(new_theta, 1e-6, 1.0), np.clip(new_gamma, 1e-6, 1.0)
        if done:
            break

    # theta and gamma are identified only up to a common scale; report theta_1 = 1.
    scale = theta[0]
    examination = {int(p): float(v / scale) for p, v in zip(positions, theta, strict=True)}
    relevance = pd.DataFrame({"qkey": pairs.get_level_values(0),
                              "doc_id": pairs.get_level_values(1),
                              "impressions": n_pair.astype(int),
                              "clicks": np.bincount(pair_codes, c,
                                                    minlength=len(pairs)).astype(int),
                              "gamma": np.minimum(gamma * scale, 1.0)})
    return ClickModel(examination=examination, relevance=relevance)
