"""The Milvus backend: index versions as Milvus collections, `live` as a Milvus alias.

    <prefix>_v0001, <prefix>_v0002, ...   one collection per index version:
                                          row (primary key), doc_id, title, vector
                                          (+ sparse: a hybrid version's BM25 weights)
    <prefix>_v0002_terms                  a hybrid version's vocabulary: term -> id
    <prefix>_live                         an alias naming one of them, moved with one
                                          `alter_alias`: searches see the old version or
                                          the new one, never a mix

A version's manifest is a collection property written last, after its vectors are in
and indexed: a collection without one is a save cut off midway, never listed, and
dropped by the next save. `milvus_uri` names the server (Milvus standalone or a cluster,
`http://host:19530`; the token comes from EMBEDLOOP_MILVUS_TOKEN) or, by default, a
Milvus Lite file under the state directory, embedded, as the tests run it.

A hybrid version's BM25 side goes into Milvus too, as each document's BM25 weight vector
(bm25s's, search/sparse.py) in a sparse field searched by inner product: exactly the
scores the in-memory BM25 gave when the version was judged, with the query analysed here
by the analyser and vocabulary the version records. Each side's top `depth` is fetched
and fused on the client (search/fusion.py), so the ranker judged is the ranker served;
Milvus's own BM25 function (its analyser, its IDF) or its server-side rerankers would
rank otherwise.

A candidate is evaluated on an exact in-memory FAISS index (`build`), and the incumbent
on its live version read back into one (`as_built`); only a published or canaried index
is uploaded. Document ids and titles are read into memory when a
version is loaded (search answers with them); the vectors stay in Milvus.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embedloop.errors import IndexUnavailable
from embedloop.faults import crash_point
from embedloop.index.base import VERSION, IndexManifest, IndexPlace, IndexStore, VectorIndex
from embedloop.index.faiss_index import FaissIndex, IndexSpec
from embedloop.search.hybrid import LexicalSide, LexicalSpec
from embedloop.search.sparse import Analyzer, SparseIndex, query_vector

MANIFEST = "embedloop.manifest"
SPARSE = "sparse"  # a hybrid version's field of BM25 weight vectors
TERMS = "_terms"  # suffix of a hybrid version's vocabulary collection
# Milvus stores no empty sparse vector: a document without a term gets a weight on a
# dimension no query has (term ids count up from 0), which never adds to a score.
NO_TERMS = {2**31 - 1: 1.0}
TOKEN_ENV = "EMBEDLOOP_MILVUS_TOKEN"
UPLOAD_ROWS = 5_000  # rows per insert: well under Milvus' 64 MB message limit at 1024-d
MAX_TITLE = 1_000  # characters kept for display (VARCHAR limits are in bytes)
# HNSW: the same build and search settings as the FAISS backend's large-corpus index.
HNSW = {"M": 32, "efConstruction": 200, "ef": 128}


def _collection_prefix(model_name: str) -> str:
    """Milvus names allow letters, digits and underscores, starting with a letter."""
    return "embedloop_" + re.sub(r"[^0-9A-Za-z_]", "_", model_name)


class MilvusIndex(VectorIndex):
    """A stored version: searched and read in Milvus; ids and titles held here."""

    def __init__(self, client: Any, collection: str, doc_ids: list[str],
                 titles: list[str], manifest: IndexManifest) -> None:
        super().__init__(doc_ids, manifest.precision, manifest.kind, manifest.params, titles,
                         manifest)
        self.client, self.collection = client, collection
        self._dim = manifest.dim

    @property
    def dim(self) -> int:
        return self._dim

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.client.search(self.collection, data=queries.tolist(), limit=k,
                                   anns_field="vector", output_fields=[],
                                   search_params={"metric_type": "IP",
                                                  "params": {"ef": max(k, HNSW["ef"])}})
        scores = np.zeros((len(queries), k), dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, hits in enumerate(found):
            for j, hit in enumerate(list(hits)[:k]):
                rows[i, j], scores[i, j] = int(hit["row"]), float(hit["distance"])
        return scores, rows

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        got = self.client.query(self.collection, ids=[int(r) for r in rows],
                                output_fields=["row", "vector"])
        by_row = {int(r["row"]): r["vector"] for r in got}
        return np.array([by_row[int(r)] for r in rows], dtype=np.float32)


class MilvusSparse:
    """A version's BM25 side in Milvus (LexicalIndex): its documents' weight vectors,
    searched by inner product, which is their BM25 score for the query's term counts."""

    def __init__(self, client: Any, collection: str, doc_ids: list[str],
                 vocabulary: dict[str, int], analyzer: Analyzer) -> None:
        self.client, self.collection = client, collection
        self.doc_ids, self.vocabulary, self.analyzer = doc_ids, vocabulary, analyzer

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to k (doc id, score) with score > 0, best first, equal scores
        in doc id order (as SparseIndex.search; at the k-th place a tie may resolve
        otherwise). A query with no term of the corpus matches nothing."""
        vectors = [query_vector(self.analyzer, self.vocabulary, q) for q in queries]
        out: list[list[tuple[str, float]]] = [[] for _ in queries]
        asked = [i for i, v in enumerate(vectors) if v]
        if not asked:
            return out
        found = self.client.search(self.collection, data=[vectors[i] for i in asked],
                                   limit=k, anns_field=SPARSE, output_fields=[],
                                   search_params={"metric_type": "IP"})
        for i, hits in zip(asked, found, strict=True):
            ranked = [(self.doc_ids[int(h["row"])], float(h["distance"])) for h in hits]
            out[i] = sorted(((d, s) for d, s in ranked if s > 0),
                            key=lambda hit: (-hit[1], hit[0]))
        return out


class MilvusIndexStore(IndexStore):
    def __init__(self, uri: str, model_name: str, token: str = "") -> None:
        from pymilvus import MilvusClient

        self.uri = uri
        self.prefix = _collection_prefix(model_name)
        self.live_alias = f"{self.prefix}_live"
        try:
            self.client = MilvusClient(uri, token=token) if token else MilvusClient(uri)
        except Exception as exc:  # connection, auth and Lite start-up errors alike
            raise IndexUnavailable(f"cannot reach Milvus at {uri}: {type(exc).__name__}: "
                                   f"{exc}") from None

    @classmethod
    def at(cls, place: IndexPlace) -> MilvusIndexStore:
        uri = place.milvus_uri or str(place.state_dir / "milvus.db")
        if "://" not in uri:  # Milvus Lite: a local file, its folder made here
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        return cls(uri, place.model_name, os.environ.get(TOKEN_ENV, ""))

    def describe(self) -> str:
        return f"Milvus at {self.uri} (collections {self.prefix}_v*, alias {self.live_alias})"

    def _collection(self, version: str) -> str:
        return f"{self.prefix}_{self.checked_version(version)}"

    def _properties(self, collection: str) -> dict[str, str]:
        return dict(self.client.describe_collection(collection).get("properties") or {})

    def build(self, vectors: np.ndarray, doc_ids: list[str], *, precision: str,
              titles: list[str] | None = None) -> VectorIndex:
        """Exact search in memory: what the candidate is evaluated on before anything is
        uploaded (and what is uploaded if it is published)."""
        return FaissIndex.build(vectors, doc_ids, precision, IndexSpec("flat-ip"), titles)

    def as_built(self, index: VectorIndex) -> VectorIndex:
        """The stored version read back into an exact in-memory index, what a candidate
        is scored on: scored on the server's HNSW index (recall@10 0.78 at 100k,
        BENCHMARKS.md), the incumbent would lose points the candidate does not."""
        ids = index.doc_ids
        parts = [index.vectors(ids[i:i + UPLOAD_ROWS]) for i in range(0, len(ids), UPLOAD_ROWS)]
        vectors = np.vstack(parts) if parts else np.zeros((0, index.dim), dtype=np.float32)
        built = self.build(vectors, ids, precision=index.precision, titles=index.titles)
        built.manifest, built.prompts = index.manifest, index.prompts
        built.lexical = index.lexical  # exact already: inner products over every match
        return built

    def _all_versions(self) -> list[str]:
        """Every version collection, finished or not."""
        start = len(self.prefix) + 1
        names = [c[start:] for c in self.client.list_collections()
                 if c.startswith(f"{self.prefix}_") and VERSION.match(c[start:])]
        return sorted(names, key=lambda v: int(v[1:]))

    def versions(self) -> list[str]:
        return [v for v in self._all_versions()
                if MANIFEST in self._properties(self._collection(v))]

    def manifest(self, version: str) -> IndexManifest:
        collection = self._collection(version)
        try:
            return IndexManifest(**json.loads(self._properties(collection)[MANIFEST]))
        except Exception as exc:  # missing collection, missing or damaged property
            raise IndexUnavailable(f"index {version} is missing or damaged: "
                                   f"{type(exc).__name__}: {exc}") from None

    def live_version(self) -> str | None:
        try:
            collection = self.client.describe_alias(self.live_alias)["collection_name"]
        except Exception:  # no alias yet
            return None
        return collection[len(self.prefix) + 1:]

    def save_version(self, index: VectorIndex, *, model_name: str, model_version: str,
                     corpus_fingerprint: str) -> IndexManifest:
        from pymilvus import DataType, MilvusClient

        sparse = index.lexical.sparse if index.lexical is not None else None
        if sparse is not None and not isinstance(sparse, SparseIndex):
            raise IndexUnavailable(f"a BM25 side held as {type(sparse).__name__} cannot be "
                                   f"saved again: build it from the corpus")
        found = self._all_versions()
        version = f"v{(int(found[-1][1:]) + 1) if found else 1:04d}"
        done = self.versions()
        if found and found[-1] not in done:  # a save cut off midway: never listed, reused
            version = found[-1]
            self.client.drop_collection(self._collection(version))
            self.client.drop_collection(self._collection(version) + TERMS)
        collection = self._collection(version)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=65_535)
        schema.add_field("title", DataType.VARCHAR, max_length=65_535)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=index.dim)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                         params={"M": HNSW["M"], "efConstruction": HNSW["efConstruction"]})
        if sparse is not None:
            schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
            params.add_index(field_name=SPARSE, index_type="SPARSE_INVERTED_INDEX",
                             metric_type="IP")
            self._save_vocabulary(collection + TERMS, sparse.vocabulary)
        self.client.create_collection(collection, schema=schema, index_params=params)
        titles = index.titles or [""] * len(index.doc_ids)
        for start in range(0, len(index.doc_ids), UPLOAD_ROWS):
            rows = np.arange(start, min(start + UPLOAD_ROWS, len(index.doc_ids)))
            vectors = index._vectors(rows)
            weights = sparse.document_vectors(rows) if sparse is not None else None
            self.client.insert(collection, [
                {"row": int(r), "doc_id": index.doc_ids[r], "title": titles[r][:MAX_TITLE],
                 "vector": vectors[i].tolist(),
                 **({SPARSE: weights[i] or NO_TERMS} if weights is not None else {})}
                for i, r in enumerate(rows)])
        self.client.flush(collection)
        crash_point("milvus upload")  # rows in, no manifest: a save cut off midway
        manifest = IndexManifest(
            version=version, model_name=model_name, model_version=str(model_version),
            dim=index.dim, n_docs=len(index.doc_ids), corpus_fingerprint=corpus_fingerprint,
            precision=index.precision, kind="milvus-hnsw-ip",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), params=dict(HNSW),
            prompts=index.prompts,
            lexical=index.lexical.spec.describe() if index.lexical else None)
        # Written last: from here on the version exists.
        self.client.alter_collection_properties(collection,
                                                {MANIFEST: json.dumps(manifest.to_json())})
        index.manifest = manifest
        return manifest

    def _save_vocabulary(self, collection: str, vocabulary: dict[str, int]) -> None:
        """term -> id, as rows (a Milvus collection needs a vector field: a constant one)."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("term", DataType.VARCHAR, max_length=65_535)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
        params = self.client.prepare_index_params()
        params.add_index(field_name="unused", index_type="FLAT", metric_type="IP")
        self.client.create_collection(collection, schema=schema, index_params=params)
        items = sorted(vocabulary.items(), key=lambda item: item[1])
        for start in range(0, len(items), UPLOAD_ROWS * 4):
            self.client.insert(collection, [{"id": i, "term": term, "unused": [0.0, 0.0]}
                                            for term, i in items[start:start + UPLOAD_ROWS * 4]])
        self.client.flush(collection)

    def _load_vocabulary(self, collection: str) -> dict[str, int]:
        self.client.load_collection(collection)
        iterator = self.client.query_iterator(collection, batch_size=10_000,
                                              output_fields=["id", "term"])
        vocabulary: dict[str, int] = {}
        try:
            while batch := iterator.next():
                vocabulary.update((r["term"], int(r["id"])) for r in batch)
        finally:
            iterator.close()
        return vocabulary

    def set_live(self, version: str) -> None:
        collection = self._collection(version)
        if version not in self.versions():
            raise IndexUnavailable(f"index {version} does not exist")
        if self.live_version() is None:
            self.client.create_alias(collection, self.live_alias)
        else:
            self.client.alter_alias(collection, self.live_alias)

    def load(self, version: str | None = None) -> MilvusIndex:
        version = self.version_to_load(version)
        manifest = self.manifest(version)
        collection = self._collection(version)
        try:
            self.client.load_collection(collection)
            found = [(int(r["row"]), r["doc_id"], r["title"]) for r in self._scan(collection)]
            vocabulary = (self._load_vocabulary(collection + TERMS) if manifest.lexical
                          else None)
        except Exception as exc:
            raise IndexUnavailable(f"index {version} is damaged: {type(exc).__name__}: "
                                   f"{exc}") from None
        found.sort()
        if [r for r, _, _ in found] != list(range(manifest.n_docs)):
            raise IndexUnavailable(f"index {version} is damaged: {len(found)} rows, manifest "
                                   f"says {manifest.n_docs}")
        doc_ids = [d for _, d, _ in found]
        index = MilvusIndex(self.client, collection, doc_ids, [t for _, _, t in found],
                            manifest)
        if manifest.lexical and vocabulary is not None:
            if not vocabulary:
                raise IndexUnavailable(f"index {version}'s BM25 side is damaged: no "
                                       f"vocabulary")
            spec = LexicalSpec.from_manifest(manifest.lexical)
            index.lexical = LexicalSide(
                MilvusSparse(self.client, collection, doc_ids, vocabulary, spec.analyzer),
                spec.fusion)
        return index

    def _scan(self, collection: str) -> list[dict[str, Any]]:
        iterator = self.client.query_iterator(collection, batch_size=10_000,
                                              output_fields=["row", "doc_id", "title"])
        rows: list[dict[str, Any]] = []
        try:
            while batch := iterator.next():
                rows += batch
        finally:
            iterator.close()
        return rows
