"""The Milvus backend: index versions as Milvus collections, `live` as a Milvus alias.

    <prefix>_v0001, <prefix>_v0002, ...   one collection per index version:
                                          row (primary key), doc_id, title, vector
    <prefix>_live                         an alias naming one of them, moved with one
                                          `alter_alias`: searches see the old version or
                                          the new one, never a mix

A version's manifest is a collection property written last, after its vectors are in
and indexed: a collection without one is a save cut off midway, never listed, and
dropped by the next save. `milvus_uri` names the server (Milvus standalone or a cluster,
`http://host:19530`; the token comes from EMBEDLOOP_MILVUS_TOKEN) or, by default, a
Milvus Lite file under the state directory, embedded, as the tests run it.

A candidate is evaluated on an exact in-memory FAISS index (`build`), and the incumbent
on its live version read back into one (`as_built`); only a published or canaried index
is uploaded. Document ids and titles are read into memory when a
version is loaded (search answers with them); the vectors stay in Milvus.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embedloop.errors import IndexUnavailable
from embedloop.faults import crash_point
from embedloop.index.base import VERSION, IndexManifest, IndexPlace, IndexStore, VectorIndex
from embedloop.index.faiss_index import FaissIndex, IndexSpec

MANIFEST = "embedloop.manifest"
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

        if index.lexical is not None:  # config.py refuses the combination; this says why
            raise IndexUnavailable("a hybrid index (BM25 beside the vectors) is not yet "
                                   "stored in Milvus: use retriever = \"dense\" with Milvus")
        found = self._all_versions()
        version = f"v{(int(found[-1][1:]) + 1) if found else 1:04d}"
        done = self.versions()
        if found and found[-1] not in done:  # a save cut off midway: never listed, reused
            version = found[-1]
            self.client.drop_collection(self._collection(version))
        collection = self._collection(version)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=65_535)
        schema.add_field("title", DataType.VARCHAR, max_length=65_535)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=index.dim)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                         params={"M": HNSW["M"], "efConstruction": HNSW["efConstruction"]})
        self.client.create_collection(collection, schema=schema, index_params=params)
        titles = index.titles or [""] * len(index.doc_ids)
        for start in range(0, len(index.doc_ids), UPLOAD_ROWS):
            rows = np.arange(start, min(start + UPLOAD_ROWS, len(index.doc_ids)))
            vectors = index._vectors(rows)
            self.client.insert(collection, [
                {"row": int(r), "doc_id": index.doc_ids[r], "title": titles[r][:MAX_TITLE],
                 "vector": vectors[i].tolist()} for i, r in enumerate(rows)])
        self.client.flush(collection)
        crash_point("milvus upload")  # rows in, no manifest: a save cut off midway
        manifest = IndexManifest(
            version=version, model_name=model_name, model_version=str(model_version),
            dim=index.dim, n_docs=len(index.doc_ids), corpus_fingerprint=corpus_fingerprint,
            precision=index.precision, kind="milvus-hnsw-ip",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), params=dict(HNSW),
            prompts=index.prompts)
        # Written last: from here on the version exists.
        self.client.alter_collection_properties(collection,
                                                {MANIFEST: json.dumps(manifest.to_json())})
        index.manifest = manifest
        return manifest

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
        except Exception as exc:
            raise IndexUnavailable(f"index {version} is damaged: {type(exc).__name__}: "
                                   f"{exc}") from None
        found.sort()
        if [r for r, _, _ in found] != list(range(manifest.n_docs)):
            raise IndexUnavailable(f"index {version} is damaged: {len(found)} rows, manifest "
                                   f"says {manifest.n_docs}")
        return MilvusIndex(self.client, collection, [d for _, d, _ in found],
                           [t for _, _, t in found], manifest)

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
