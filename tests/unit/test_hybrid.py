"""The lexical side (analyser, BM25 index) and the fusion of two rankings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedloop.search.fusion import Fusion, min_max
from embedloop.search.sparse import Analyzer, SparseIndex


def test_english_words_are_stemmed_and_stopwords_dropped() -> None:
    # Lucene's English stopwords, as Elasticsearch's `english` analyser drops them
    assert Analyzer().terms("The proteins are binding to DNA") == ["protein", "bind", "dna"]


def test_chinese_is_tokenized_as_chinese() -> None:
    """Not one 'word' per sentence (Chinese has no spaces): characters and their
    bigrams, or jieba's words; Latin words in the same text are still words."""
    text = "北京体育大学旁边是哪个公园 p53"
    bigrams = Analyzer().terms(text)
    assert {"北", "京", "北京", "公园"} <= set(bigrams) and "p53" in bigrams
    assert "北京体育大学旁边是哪个公园" not in bigrams
    assert Analyzer(cjk="jieba").terms(text) == ["北京体育大学", "旁边", "是", "哪个", "公园",
                                                 "p53"]


def test_an_unknown_language_or_mode_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="no stemmer for language 'klingon'"):
        Analyzer(language="klingon")
    with pytest.raises(ValueError, match="cjk must be one of"):
        Analyzer(cjk="words")


DOCS = {"d1": "protein binding to DNA", "d2": "DNA repair protein",
        "d3": "cats and dogs", "d4": "北京的公园"}


def test_bm25_ranks_matching_documents_and_breaks_ties_by_id(tmp_path: Path) -> None:
    index = SparseIndex.build(list(DOCS.values()), list(DOCS))
    [both, none, chinese] = index.search(["protein DNA", "quantum gravity", "公园"], 10)
    assert [d for d, _ in both] == ["d1", "d2"]  # equal scores: id order
    assert both[0][1] == pytest.approx(both[1][1]) and both[0][1] > 0
    assert none == [] and [d for d, _ in chinese] == ["d4"]
    index.save(tmp_path / "sparse")
    loaded = SparseIndex.load(tmp_path / "sparse")  # memory-mapped
    assert loaded.search(["protein DNA", "公园"], 10) == [both, chinese]
    assert loaded.analyzer == index.analyzer


def test_the_top_k_keeps_the_order_of_the_whole_ranking() -> None:
    texts = [f"gene {'gene ' * (i % 4)}sample {i}" for i in range(40)]
    index = SparseIndex.build(texts, [f"d{i:02d}" for i in range(40)])
    full = index.search(["gene"], 40)[0]
    for k in (1, 5, 13):
        assert index.search(["gene"], k)[0] == full[:k]


def test_convex_fusion_scales_each_side_and_missing_scores_zero() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    sparse = [("c", 12.0), ("d", 4.0)]
    fused = Fusion(weight=0.5).fuse(dense, sparse, 10)
    # a: dense 1, sparse missing 0; c: dense 0 (last), sparse 1; b: 0.5 dense
    assert fused == [("a", 0.5), ("c", 0.5), ("b", 0.25), ("d", 0.0)]
    # the extremes are one side's order (min-max puts a side's last document at 0, as if
    # it had not been returned)
    assert [d for d, _ in Fusion(weight=1.0).fuse(dense, sparse, 2)] == ["a", "b"]
    sparse3 = [*sparse, ("e", 1.0)]
    assert [d for d, _ in Fusion(weight=0.0).fuse(dense, sparse3, 2)] == ["c", "d"]


def test_each_side_contributes_only_its_depth() -> None:
    dense = [(f"d{i}", 1.0 - i / 10) for i in range(10)]
    fused = Fusion(weight=1.0, depth=3).fuse(dense, [], 10)
    assert [d for d, _ in fused] == ["d0", "d1", "d2"]


def test_rrf_ignores_scores_and_ties_break_by_id() -> None:
    fused = Fusion(weight=0.5, method="rrf").fuse([("b", 100.0), ("a", 0.1)],
                                                 [("a", 3.0), ("b", 1.0)], 10)
    assert [d for d, _ in fused] == ["a", "b"] and fused[0][1] == fused[1][1]


def test_equal_scores_on_one_side_are_all_best() -> None:
    assert min_max([("x", 2.0), ("y", 2.0)]) == {"x": 1.0, "y": 1.0}
    with pytest.raises(ValueError, match="fusion weight"):
        Fusion(weight=1.5)


def test_a_fusion_weight_moves_only_when_the_tune_queries_credibly_prefer_it() -> None:
    from embedloop.learn.fusion import choose_fusion_weight

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 60)
    # 0.7 is better on 55 of 60 queries: credible, it moves
    better = {0.5: base, 0.6: base + 0.01, 0.7: base + np.where(np.arange(60) < 55, 0.05, -0.01)}
    chosen = choose_fusion_weight(better, incumbent=0.5)
    assert chosen.weight == 0.7 and chosen.p_not_better < 0.05 and "0.7:" in chosen.why
    # the best mean by noise alone (a few queries up, as many down): the incumbent's stays
    noisy = {0.5: base, 0.9: base + np.where(np.arange(60) % 2 == 0, 0.06, -0.05)}
    kept = choose_fusion_weight(noisy, incumbent=0.5)
    assert kept.weight == 0.5 and kept.p_not_better >= 0.05 and "not credibly" in kept.why
    # equal means: the incumbent's, and a plain best (alpha 1) still breaks ties towards it
    tied = {0.3: base, 0.5: base, 0.8: base}
    assert choose_fusion_weight(tied, incumbent=0.5, alpha=1.0).weight == 0.5


def test_fusion_scores_rank_each_weight_as_fusion_defines_and_condense_to_shown() -> None:
    from embedloop.learn.fusion import fusion_scores
    from embedloop.search.retrieval import Sides

    # the dense side ranks d3 then d1, BM25 finds d2: the weight decides where d2 goes
    sides = Sides(dense=[[("d3", 0.9), ("d1", 0.5), ("d4", 0.1)]],
                  bm25=[[("d2", 7.0), ("d1", 1.0)]])
    qrels = {"q": {"d2": 1.0}}
    scores = fusion_scores(sides, ["q"], qrels, {}, Fusion(), [0.0, 1.0])
    assert scores[0.0][0] == 1.0  # BM25 only: d2 first
    assert scores[1.0][0] == pytest.approx(1 / np.log2(4))  # dense only: d3, d1, d2 (tie, id)
    # over what users were shown (d1 and d2): dense only puts d2 second
    shown = fusion_scores(sides, ["q"], qrels, {"q": {"d1", "d2"}}, Fusion(), [1.0])
    assert shown[1.0][0] == pytest.approx(1 / np.log2(3))


def test_the_served_fusion_is_the_defined_one_on_random_lists_with_ties() -> None:
    """`fuse` (numpy, on every query's path) against `fuse_reference` (the docstring's
    definition in plain Python): the same documents, scores and order, ties included."""
    import random

    rng = random.Random(1)
    for _ in range(300):
        docs = [f"d{rng.randrange(300)}" for _ in range(300)]
        dense = sorted(((d, rng.choice([0.5, round(rng.random(), 2)]))
                        for d in list(dict.fromkeys(docs[:150]))[:rng.randrange(0, 120)]),
                       key=lambda hit: -hit[1])
        sparse = sorted(((d, rng.choice([1.0, rng.random() * 10]))
                         for d in list(dict.fromkeys(docs[150:]))[:rng.randrange(0, 120)]),
                        key=lambda hit: -hit[1])
        for fusion in (Fusion(weight=rng.choice([0.0, 0.3, 1.0]), depth=rng.choice([5, 100])),
                       Fusion(weight=0.4, method="rrf", depth=50)):
            for k in (1, 10, 100):
                assert fusion.fuse(dense, sparse, k) == fusion.fuse_reference(dense, sparse, k)
