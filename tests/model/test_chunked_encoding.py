"""Re-indexing in chunks over a Prefect task runner gives the vectors one pass gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from embedloop.config import load_settings
from embedloop.corpus import document_texts, load_corpus
from embedloop.encoding import encode, load_model
from tasks.evaluate import encode_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_chunks_over_a_task_runner_match_a_single_pass(tiny_beir: Path, base_model_path: str,
                                                       runner: str) -> None:
    corpus = load_corpus(tiny_beir / "corpus.jsonl").head(30)
    settings = load_settings(None, home=".", task_runner=runner, encode_chunk_docs=12,
                             max_seq_length=64)
    model = load_model(base_model_path, "cpu", max_seq_length=64)

    @flow
    def reindex() -> np.ndarray:
        return encode_corpus(settings, model, base_model_path, corpus, "fp32")

    chunked = reindex()  # 3 chunks: 12 + 12 + 6 documents
    single = encode(model, document_texts(corpus), role="document", precision="fp32")
    assert chunked.shape == single.shape == (30, 384)
    np.testing.assert_allclose(chunked, single, atol=1e-5)
