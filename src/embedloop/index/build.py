"""A corpus's index built with a model: the documents encoded in chunks, then indexed by
the store as the live one would be, in memory (saved only if it is published).

How the chunks are spread is the caller's choice (`EncodeChunks`): one after another
here by default; the pipeline hands them to its task runner (threads, or a Dask cluster),
so a large re-index spreads over workers.
"""

from __future__ import annotations

import copy as copy_module
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from embedloop.index.base import IndexStore, VectorIndex
from embedloop.ingest.corpus import document_texts
from embedloop.models.base_models import model_prompts
from embedloop.models.encoding import encode, pick_device, resolve_precision
from embedloop.models.exported import EXPORTED, export_refusal
from embedloop.report.log import Log

if TYPE_CHECKING:
    from embedloop.config import Settings
    from embedloop.search.hybrid import LexicalSpec

# (model, its folder, chunks of texts, encode options) -> one array of vectors per chunk
EncodeChunks = Callable[[Any, str, list[list[str]], dict[str, Any]], list[np.ndarray]]


@dataclass(frozen=True)
class CorpusEncoding:
    """How documents are encoded: batch and chunk sizes, the sequence length, and the torch
    precision to fall back on when an exported runtime refuses a model."""

    batch_size: int = 64
    chunk_docs: int = 50_000
    max_seq_length: int | None = None
    precision: str = "auto"  # encode_precision
    backend: str = "auto"  # encode_backend

    @classmethod
    def from_settings(cls, settings: Settings) -> CorpusEncoding:
        return cls(settings.encode_batch_size, settings.encode_chunk_docs,
                   settings.max_seq_length, settings.encode_precision, settings.encode_backend)


def encode_one_by_one(model: Any, model_path: str, chunks: list[list[str]],
                      options: dict[str, Any]) -> list[np.ndarray]:
    """Every chunk in this process, in turn."""
    return [encode(model, chunk, role="document", batch_size=options["batch_size"],
                   precision=options["precision"], show_progress=True) for chunk in chunks]


def encode_corpus(corpus: pd.DataFrame, model: Any, model_path: str, precision: str,
                  encoding: CorpusEncoding, encode_chunks: EncodeChunks = encode_one_by_one,
                  log: Log | None = None, runner: str = "in-process") -> np.ndarray:
    """The corpus's vectors, encoded in chunks of `encoding.chunk_docs` documents."""
    texts = document_texts(corpus)
    size = encoding.chunk_docs
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)] or [[]]
    options = {"batch_size": encoding.batch_size, "precision": precision,
               "max_seq_length": encoding.max_seq_length}
    vectors = np.vstack(encode_chunks(model, model_path, chunks, options))
    (log or logging.getLogger(__name__)).info("encoded %d documents in %d chunk(s) (%s, %s runner)",
                                              len(vectors), len(chunks), precision, runner)
    return vectors


def index_corpus(store: IndexStore, corpus: pd.DataFrame, model: Any, model_path: str,
                 precision: str, encoding: CorpusEncoding,
                 encode_chunks: EncodeChunks = encode_one_by_one, log: Log | None = None,
                 runner: str = "in-process", lexical: LexicalSpec | None = None,
                 ) -> VectorIndex:
    """The corpus encoded by `model` (at `model_path`), in an index of the kind the live
    one would be, in memory, holding the model's prompts; with its BM25 side if the
    deployment is hybrid (`lexical`)."""
    log = log or logging.getLogger(__name__)
    if precision in EXPORTED and encoding.backend == "auto":
        refusal = export_refusal(model)
        if refusal:  # "auto" asked for the fastest way that works: this one does not
            precision = resolve_precision(encoding.precision, pick_device())
            log.warning("%s; encoding with torch (%s) instead", refusal, precision)
    vectors = encode_corpus(corpus, model, model_path, precision, encoding, encode_chunks, log,
                            runner)
    built = store.build(vectors, list(corpus["doc_id"]), precision=precision,
                        titles=list(corpus["title"]))
    built.prompts = model_prompts(model)
    if lexical is not None:
        built.lexical = lexical.build(document_texts(corpus), list(corpus["doc_id"]))
    return built


def with_lexical(index: VectorIndex, corpus: pd.DataFrame, lexical: LexicalSpec | None,
                 keep_weight: bool = False) -> VectorIndex:
    """`index`, whose vectors are the corpus's, with the lexical side the deployment asks
    for. A stored version built otherwise (dense, before the deployment turned hybrid, or
    with another analyser or fusion) comes back as a new, unsaved index over the same
    vectors: it is judged as it will be served, and saved as a new version if published.
    `keep_weight` (the weight is learned): the fusion weight `index` has stands, and the
    spec's is only the first hybrid version's."""
    have = index.lexical.spec if index.lexical else None
    if keep_weight and have is not None and lexical is not None:
        lexical = dataclasses.replace(lexical, fusion=dataclasses.replace(
            lexical.fusion, weight=have.fusion.weight))
    if have == lexical:
        return index
    copy = copy_module.copy(index)
    copy.manifest = None
    copy.lexical = (lexical.build(document_texts(corpus), list(corpus["doc_id"]))
                    if lexical else None)
    return copy


def dense_only(index: VectorIndex) -> VectorIndex:
    """`index` searched by its vectors alone (a hybrid version's BM25 side left out)."""
    if index.lexical is None:
        return index
    copy = copy_module.copy(index)
    copy.lexical = None
    return copy


def with_fusion(index: VectorIndex, weight: float) -> VectorIndex:
    """A hybrid `index` fused with another dense share: the same stored version (same
    sides, same manifest), searched as a model judged with `weight` searches it."""
    assert index.lexical is not None, "a dense index has no fusion"
    if index.lexical.fusion.weight == weight:
        return index
    copy = copy_module.copy(index)
    copy.lexical = index.lexical.with_fusion(
        dataclasses.replace(index.lexical.fusion, weight=weight))
    return copy


@dataclass(frozen=True)
class CorpusIndexer:
    """`index_corpus` for one corpus, store and runtime: what builds an index for any model
    (the bootstrap's, a repaired champion's, a re-encoded incumbent's, a candidate's)."""

    store: IndexStore
    corpus: pd.DataFrame
    precision: str
    encoding: CorpusEncoding
    encode_chunks: EncodeChunks = encode_one_by_one
    log: Log | None = None
    runner: str = "in-process"  # where the chunks are encoded, for the log
    lexical: LexicalSpec | None = None  # a hybrid deployment's BM25 side and fusion
    learns_weight: bool = False  # its fusion weight is learned (settings.fusion_weights)

    def __call__(self, model: Any, model_path: str) -> VectorIndex:
        return index_corpus(self.store, self.corpus, model, model_path, self.precision,
                            self.encoding, self.encode_chunks, self.log, self.runner,
                            self.lexical)
