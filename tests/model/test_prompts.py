"""Prompts travel with a model: into the index it builds (the manifest), through
training (both kinds), and an index is never searched with another prompt setup.
Real MiniLM, real FAISS; MiniLM is given e5's prompts to carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedloop.config import TrainingConfig
from embedloop.errors import IndexUnavailable
from embedloop.index.faiss_index import FaissIndexStore
from embedloop.learn.training import embed_queries, fine_tune, fine_tune_query_side
from embedloop.models.base_models import model_prompts, resolve_base_model, role_prompt
from embedloop.models.encoding import encode, load_model
from embedloop.models.exported import export_refusal
from embedloop.search.retrieval import Retriever

E5 = {"query": "query: ", "document": "passage: "}
DOCS = {"d1": "Proteins are chains of amino acids.", "d2": "北京是中国的首都。",
        "d3": "Vitamin D is made in the skin.", "d4": "上海是一座港口城市。"}


@pytest.fixture(scope="module")
def prompted_path() -> str:
    return resolve_base_model("", tuple(sorted(E5.items())))


def test_an_index_is_searched_only_with_its_prompt_setup(prompted_path: str,
                                                         base_model_path: str,
                                                         tmp_path: Path) -> None:
    prompted = load_model(prompted_path, device="cpu")
    plain = load_model(base_model_path, device="cpu")
    vectors = encode(prompted, list(DOCS.values()), role="document")
    store = FaissIndexStore(tmp_path / "indexes")
    built = store.build(vectors, list(DOCS), precision="fp32")
    built.prompts = model_prompts(prompted)
    saved = store.save_version(built, model_name="m", model_version="1",
                               corpus_fingerprint="x")
    assert saved.prompts == E5 and store.manifest(saved.version).prompts == E5
    loaded = store.load(saved.version)
    hits = Retriever(prompted, loaded).search(["首都"], k=1)[0]
    assert hits[0].doc_id == "d2"
    with pytest.raises(IndexUnavailable, match="built with prompts .*'passage: '.* uses none"):
        Retriever(plain, loaded)
    # an index saved before prompts were recorded holds no one to them
    loaded.prompts = None
    Retriever(plain, loaded)


def pairs() -> pd.DataFrame:
    rows = [("what are proteins", "d1"), ("中国的首都", "d2"), ("vitamin d", "d3"),
            ("港口城市", "d4")] * 2
    return pd.DataFrame({"anchor": [q for q, _ in rows], "positive": [DOCS[d] for _, d in rows],
                         "doc_id": [d for _, d in rows], "qkey": [q for q, _ in rows]})


def test_both_kinds_of_training_keep_the_prompts(prompted_path: str, tmp_path: Path) -> None:
    cfg = TrainingConfig(max_steps=2, batch_size=4, precision="fp32")
    full = fine_tune(prompted_path, pairs(), tmp_path / "full", cfg, device="cpu",
                     show_progress=False)
    assert model_prompts(load_model(str(full.path), device="cpu")) == E5

    base = load_model(prompted_path, device="cpu")
    ids = list(DOCS)
    vectors = encode(base, list(DOCS.values()), role="document")
    query_side = fine_tune_query_side(prompted_path, pairs(), ids, vectors,
                                      tmp_path / "query", cfg, device="cpu",
                                      show_progress=False)
    again = load_model(str(query_side.path), device="cpu")
    assert model_prompts(again) == E5
    # the document route is the base model's: the same vectors, prompts included
    np.testing.assert_allclose(encode(again, list(DOCS.values()), role="document"), vectors,
                               atol=1e-5)


def test_query_side_training_embeds_queries_as_encode_query_does(prompted_path: str) -> None:
    """The vectors the query-side loss is computed on are those search will use, also for a
    Pooling that leaves the prompt's tokens out (instructor-style models)."""
    import torch

    texts = ["what are proteins", "中国的首都"]
    made = {}
    for include_prompt in (True, False):
        model = load_model(prompted_path, device="cpu").eval()
        model.set_pooling_include_prompt(include_prompt)
        with torch.no_grad():
            trained = embed_queries(model, texts, role_prompt(model, "query")).numpy()
        searched = model.encode_query(texts, normalize_embeddings=True)
        np.testing.assert_allclose(trained, searched, atol=1e-5)
        made[include_prompt] = searched
    assert not np.allclose(made[True], made[False], atol=1e-3)  # the setting matters
    # the exported path pools every token: such a model stays in torch, saying why
    assert "include_prompt = false" in (export_refusal(model) or "")
