from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from embedloop.learn.pairs import (
    above_chance,
    build_training_data,
    chance_similarity,
    in_eval_pool,
    mine_corpus_negatives,
    normalize_query,
    similarity_above_chance,
)


def clicks(rows: list[tuple[str, str, str, bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"event_id": f"e{i}", "ts": pd.Timestamp(ts, tz="UTC"), "query": q,
                          "doc_id": d, "clicked": c} for i, (ts, q, d, c) in enumerate(rows)])


def pooled(fraction: float, n: int = 40) -> tuple[list[str], list[str]]:
    """(in the pool, not in it) among queries "query 0" .. "query n-1"."""
    names = [f"query {i}" for i in range(n)]
    inside = [q for q in names if in_eval_pool(normalize_query(q), fraction)]
    return inside, [q for q in names if q not in inside]


def test_pool_membership_is_stable_and_has_the_asked_share() -> None:
    keys = [f"query number {i}" for i in range(20_000)]
    share = sum(in_eval_pool(k, 0.2) for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.01
    # Fixed answers: a change of hash would move pool queries into training.
    assert [in_eval_pool(f"query {i}", 0.5) for i in range(8)] == GOLDEN
    # a larger share only adds queries: the pool of 0.2 stays inside the pool of 0.3
    assert all(in_eval_pool(k, 0.3) for k in keys[:2000] if in_eval_pool(k, 0.2))


GOLDEN = [False, True, True, False, True, True, True, False]


def test_pool_queries_are_never_trained_on_and_are_labelled_from_all_history() -> None:
    inside, outside = pooled(0.5)
    pool_query, train_query = inside[0], outside[0]
    history = clicks([("2026-01-01", pool_query, "d1", True),
                      ("2026-01-01", train_query, "d2", True)])
    accepted = clicks([("2026-01-02", pool_query.upper(), "d4", True),   # asked again
                       ("2026-01-02", train_query, "d3", True),
                       ("2026-01-02", outside[1], "d5", False)])
    data = build_training_data(accepted, {f"d{i}": f"text {i}" for i in range(6)},
                               pool_fraction=0.5, history=history, graded_labels=False)
    assert data.eval_qrels == {pool_query: {"d1": 1.0, "d4": 1.0}}  # first-seen text
    assert data.recent_qrels == data.eval_qrels  # asked in this batch too
    assert data.pool_new == 0  # already in the pool from history
    assert set(data.pairs["anchor"]) == {train_query}
    assert normalize_query(pool_query) not in set(data.pairs["qkey"])


def test_pairs_are_distinct_and_carry_document_text() -> None:
    inside, outside = pooled(0.5)
    q_a, q_b, q_c = outside[:3]
    accepted = clicks([
        ("2026-01-01", q_a, "d1", True), ("2026-01-02", q_a, "d1", True),
        ("2026-01-02", q_a, "d2", True), ("2026-01-03", q_b, "d2", False),
        ("2026-01-05", q_c, "d3", True), ("2026-01-06", inside[0], "d3", True),
    ])
    data = build_training_data(accepted, {"d1": "one", "d2": "two", "d3": "three"},
                               pool_fraction=0.5, graded_labels=False)
    pairs = data.pairs.set_index(["query", "doc_id"])
    assert pairs.loc[(q_a, "d1"), "clicks"] == 2  # two clicks, one pair
    assert pairs.loc[(q_a, "d2"), "positive"] == "two"
    assert (q_b, "d2") not in pairs.index  # shown but not clicked: not a positive
    assert data.eval_queries == 1 and data.train_queries == 2 and data.pool_new == 1


def impressions(sessions: list[tuple[str, str, list[str], set[str]]]) -> pd.DataFrame:
    """(ts, query, shown documents in order, clicked documents) -> log rows."""
    rows = []
    for s, (ts, query, shown, clicked) in enumerate(sessions):
        for position, doc in enumerate(shown, start=1):
            rows.append({"event_id": f"e{s}-{position}", "ts": pd.Timestamp(ts, tz="UTC"),
                         "query": query, "doc_id": doc, "position": position,
                         "clicked": doc in clicked})
    return pd.DataFrame(rows)


def test_click_model_drops_noise_clicks_and_picks_skipped_negatives() -> None:
    sessions = []
    for day in range(1, 9):  # the ranker's order varies a little from day to day
        odd = day % 2
        sessions.append((f"2026-01-0{day}", "good query",
                         ["d1", "d2", "d3", "d4"] if odd else ["d2", "d1", "d4", "d3"], {"d2"}))
        sessions.append((f"2026-01-0{day}", "other query",
                         ["d3", "d4", "d1", "d2"] if odd else ["d4", "d3", "d2", "d1"],
                         {"d3", "d4"} if day == 1 else {"d3"}))  # one stray click on d4
    # in the pool at 0.3 (the other two are not): evaluated, never trained on
    sessions.append(("2026-01-09", "late query 0", ["d1", "d2", "d3", "d4"], {"d1"}))
    accepted = impressions(sessions)
    texts = {d: f"text {d}" for d in ("d1", "d2", "d3", "d4")}
    data = build_training_data(accepted, texts, pool_fraction=0.3, min_relevance=0.5,
                               hard_negatives=True)
    assert set(zip(data.pairs["anchor"], data.pairs["doc_id"], strict=True)) == {
        ("good query", "d2"), ("other query", "d3")}
    assert data.dropped_as_noise == 1  # the stray click on d4
    negatives = dict(zip(data.pairs["anchor"], data.pairs["negative"], strict=True))
    # d1 sits at the top half the time and is never clicked: examined and skipped
    assert negatives["good query"] == "text d1"
    # the other query's skipped documents sat low (rarely examined: no evidence), so its
    # negative is random, but never d4 or d3, which users clicked for it
    assert negatives["other query"] in {"text d1", "text d2"}
    assert data.examination[1] == 1.0 and data.examination[4] < 1.0
    assert list(data.eval_qrels) == ["late query 0"]
    # graded: the gain is the click model's debiased relevance, not 1
    gain = data.eval_qrels["late query 0"]["d1"]
    assert 0.5 <= gain <= 1.0
    assert set(data.clicked_for["other query"]) == {"d3", "d4"}


def test_replay_trains_again_on_part_of_earlier_batches() -> None:
    shown = ["d1", "d2"]
    history = impressions([("2026-01-01", f"old {i}", shown, {"d1"}) for i in range(10)])
    current = impressions([(f"2026-02-0{i + 1}", f"new {i}", shown, {"d2"}) for i in range(4)])
    data = build_training_data(current, {"d1": "a", "d2": "b"}, pool_fraction=0.05,
                               history=history, replay_fraction=0.5)
    # "old 8" and "new 0" are in the pool: 9 earlier pairs can be replayed, 3 are fresh
    assert data.replayed == 4  # round(0.5 * 9)
    assert sum(a.startswith("old") for a in data.pairs["anchor"]) == 4
    assert sum(a.startswith("new") for a in data.pairs["anchor"]) == 3
    assert sorted(data.eval_qrels) == ["new 0", "old 8"]
    assert list(data.recent_qrels) == ["new 0"] and data.pool_new == 1


def test_corpus_mined_negative_keeps_the_margin_and_skips_clicked_documents() -> None:
    pairs = pd.DataFrame({"qkey": ["q", "q", "r"], "doc_id": ["p1", "p2", "p3"]})
    hits = {"q": [("p1", 0.90), ("near", 0.88), ("clicked", 0.80), ("far", 0.70),
                  ("p2", 0.60), ("farther", 0.50)],
            "r": [("x", 0.9), ("y", 0.8)]}  # r's positive is not in its top-k
    mined, passed_over = mine_corpus_negatives(pairs, hits, {"q": {"p1", "p2", "clicked"}},
                                               relative_margin=0.05)
    # p1 (0.90): "near" is within 5% of it (0.855), "clicked" was clicked for q -> "far"
    # p2 (0.60): everything above it fails the margin -> "farther"
    assert mined == ["far", "farther", None] and passed_over == 0


def test_a_near_duplicate_of_the_positive_is_never_its_negative() -> None:
    """In a corpus of paraphrases the best-ranked unclicked document is often the
    positive's twin: passed over when their vectors are closer than max_similarity."""
    pairs = pd.DataFrame({"qkey": ["q"], "doc_id": ["p"]})
    hits = {"q": [("p", 0.90), ("twin", 0.80), ("other", 0.70)]}
    twins = {frozenset({"p", "twin"}): 0.97}

    def similarity(a: str, b: str) -> float:
        return twins.get(frozenset({a, b}), 0.3)

    assert mine_corpus_negatives(pairs, hits, {}, 0.05) == (["twin"], 0)
    assert mine_corpus_negatives(pairs, hits, {}, 0.05, similarity, 0.9) == (["other"], 1)
    assert mine_corpus_negatives(pairs, hits, {}, 0.05, similarity, 0.99) == (["twin"], 0)


def test_tune_queries_are_never_trained_on_and_stay_tune_queries() -> None:
    """The tune split is stable (by hash) and apart from the pool: its queries give
    labels, never pairs, in every run."""
    rows = [("2026-01-01", f"query {i}", f"d{i % 6}", True) for i in range(60)]
    accepted = clicks(rows).assign(position=1)
    texts = {f"d{i}": f"text {i}" for i in range(6)}
    data = build_training_data(accepted, texts, pool_fraction=0.2, tune_fraction=0.3)
    again = build_training_data(accepted, texts, pool_fraction=0.2, tune_fraction=0.3)
    tune, pool = set(data.tune_qrels), set(data.eval_qrels)
    assert 5 < len(tune) < 35 and not tune & pool and tune == set(again.tune_qrels)
    assert not tune & set(data.pairs["query"])
    assert len(tune) + len(pool) + data.train_queries == 60
    assert all(data.shown_for(data.tune_qrels).values())  # condensed lists can be scored
    assert build_training_data(accepted, texts, pool_fraction=0.2).tune_qrels == {}


def test_cjk_queries_that_differ_only_in_width_or_spacing_are_one_query() -> None:
    """Full-width Latin and digits, the ideographic space, half-width katakana: one key.
    Different characters stay different queries."""
    assert normalize_query("ＧＰＵ　价格 ２０２４") == normalize_query("gpu 价格 2024")
    assert normalize_query("ｶﾀｶﾅ") == normalize_query("カタカナ")
    assert normalize_query("北京 天气") != normalize_query("北京天气")  # a space is a word break
    assert normalize_query("北京") != normalize_query("南京")
    data = build_training_data(
        clicks([("2026-01-01", "ＧＰＵ　价格", "d1", True), ("2026-01-02", "gpu 价格", "d1", True),
                ("2026-01-03", "Gpu  价格", "d2", True)]).assign(position=1),
        {"d1": "显卡价格", "d2": "GPU 价格表"}, pool_fraction=0.0)
    assert data.pairs["qkey"].nunique() == 1
    # what users typed is what the model trains on
    assert set(data.pairs["anchor"]) <= {"ＧＰＵ　价格", "gpu 价格", "Gpu  价格"}


@dataclass
class StoredIndex:
    """Vectors as an index stores them (a fake of VectorIndex's two members)."""
    doc_ids: list[str]
    matrix: np.ndarray

    def vectors(self, doc_ids: list[str]) -> np.ndarray:
        return self.matrix[[self.doc_ids.index(d) for d in doc_ids]]

def test_near_duplicate_similarity_is_measured_from_chance_so_it_means_the_same_per_model() -> None:
    """e5's documents all share a cosine of about 0.85; MiniLM's about 0.1. Rescaled from
    chance to identical, a twin is a twin under both, and a stranger is not."""
    rng = np.random.default_rng(0)
    for offset in (0.0, 2.0):  # a shared direction lifts every cosine, as e5's does
        common = np.full(64, offset / 8)
        corpus = rng.normal(size=(200, 64)) / 8 + common
        twin = corpus[0] + rng.normal(size=64) / 80
        stored = StoredIndex([f"d{i}" for i in range(200)] + ["twin"],
                             np.vstack([corpus, twin]))
        chance, similarity = similarity_above_chance(stored, {"d0", "d1", "twin"})
        assert chance == pytest.approx(chance_similarity(stored.matrix), abs=0.02)
        assert (offset > 0) == (chance > 0.5)
        assert similarity("d0", "twin") > 0.9
        assert abs(similarity("d0", "d1")) < 0.3
    assert chance_similarity(np.eye(3)) == 0.0 and above_chance(1.0, 0.85) == 1.0


def test_mining_returns_new_pairs_and_leaves_its_input_as_it_was() -> None:
    """The recipe's mining step: the champion's hits become negatives in a copy; the data
    it was given (logged, replayed, summarized elsewhere) is not rewritten."""
    from embedloop.learn.pairs import TrainingData
    from embedloop.learn.recipe import Recipe, mine_negatives
    from embedloop.search.retrieval import Hit

    class Champion:  # the champion's ranking, as its index would return it
        index = None

        def search(self, texts: list[str], k: int) -> list[list[Hit]]:
            return [[Hit("p", 0.9), Hit("clicked", 0.8), Hit("hard", 0.7)] for _ in texts]

    pairs = pd.DataFrame({"qkey": ["q"], "query": ["q"], "doc_id": ["p"], "anchor": ["q"],
                          "positive": ["P"], "negative": ["skipped text"],
                          "negative_id": ["skipped"]})
    data = TrainingData(pairs, {}, 1, 0, clicked_for={"q": {"p", "clicked"}})
    corpus = pd.DataFrame({"doc_id": ["p", "clicked", "hard"], "title": ["", "", ""],
                           "text": ["P", "C", "H"]})
    mined, counts = mine_negatives(Recipe(negative_max_similarity=1.0), data, Champion(),
                                   corpus)
    assert (counts.mined, counts.near_duplicates) == (1, 0)
    assert mined.pairs.loc[0, "negative_id"] == "hard" and mined.pairs.loc[0, "negative"] == "H"
    assert data.pairs.loc[0, "negative_id"] == "skipped"  # the input as it was
    assert data.pairs.loc[0, "negative"] == "skipped text"
