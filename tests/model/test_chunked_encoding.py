"""Re-indexing in chunks over a Prefect task runner gives the vectors one pass gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from embedloop.config import load_settings
from embedloop.index.build import CorpusEncoding, encode_corpus
from embedloop.ingest.corpus import document_texts, load_corpus
from embedloop.models.encoding import encode, load_model
from embedloop.tasks._encode import chunks_on_runner

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
        on_runner = chunks_on_runner(settings.task_runner, settings.dask_address,
                                     settings.encode_workers, settings.encode_timeout_s)
        return encode_corpus(corpus, model, base_model_path, "fp32",
                             CorpusEncoding.from_settings(settings), on_runner)

    chunked = reindex()  # 3 chunks: 12 + 12 + 6 documents
    single = encode(model, document_texts(corpus), role="document", precision="fp32")
    assert chunked.shape == single.shape == (30, 384)
    np.testing.assert_allclose(chunked, single, atol=1e-5)
