"""The query-side loss against fixed document vectors: which candidates are negatives."""

from __future__ import annotations

import math

import torch

from embedloop.learn.training import exclusions, query_side_loss


def test_the_same_document_and_other_clicks_of_the_query_are_not_negatives() -> None:
    # anchors 0 and 1 are one query (two clicks); anchor 2 clicked doc 5, which is also
    # anchor 0's hard negative; anchor 1 has no hard negative (-1)
    positives = torch.tensor([3, 4, 5])
    negatives = torch.tensor([5, -1, 3])
    qkeys = torch.tensor([0, 0, 1])
    excluded = exclusions(positives, negatives, qkeys)
    # candidates: positives 3, 4, 5, then negatives 5, (none), 3
    assert excluded.tolist() == [
        [False, True, False, False, True, True],   # 4: same query; 3 (as a negative): own doc
        [True, False, False, False, True, False],  # 3: same query
        [False, False, False, True, True, False],  # 5 again, as anchor 0's negative
    ]


def test_loss_is_cross_entropy_over_the_allowed_candidates() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    excluded = torch.zeros(2, 4, dtype=torch.bool)
    excluded[0, 3] = True
    loss = query_side_loss(queries, candidates, excluded, None, scale=1.0)
    first = -math.log(math.e / (math.e + 1 + math.exp(0.6)))
    second = -math.log(math.e / (1 + math.e + math.exp(0.8) + math.exp(0.6)))
    assert math.isclose(float(loss), (first + second) / 2, rel_tol=1e-6)
    weighted = query_side_loss(queries, candidates, excluded, torch.tensor([1.0, 0.0]),
                               scale=1.0)
    assert math.isclose(float(weighted), first, rel_tol=1e-6)
