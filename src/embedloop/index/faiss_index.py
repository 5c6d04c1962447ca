"""The default index backend: FAISS files on local disk.

    indexes/
      versions/v0001/  index.faiss  doc_ids.json  titles.json  manifest.json
      versions/v0002/  ...  sparse/   (a hybrid version's BM25 side: search/hybrid.py)
      live -> versions/v0002        (a symlink, replaced with one rename)

A version directory is complete (and fsynced), both sides of a hybrid one included,
before it is renamed into place, and `live` moves with a single `os.replace`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedloop.errors import IndexUnavailable
from embedloop.index.base import (
    HNSW_MIN_DOCS,
    IVF_MIN_DOCS,
    VERSION,
    IndexManifest,
    IndexPlace,
    IndexStore,
    VectorIndex,
)

if TYPE_CHECKING:
    from embedloop.search.hybrid import LexicalSide

FILES = ("index.faiss", "doc_ids.json", "titles.json", "manifest.json")

@dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat-ip | hnsw-ip | ivf-flat-ip
    params: dict[str, int] = field(default_factory=dict)


def choose_index(n_docs: int, hnsw_min_docs: int = HNSW_MIN_DOCS,
                 ivf_min_docs: int = IVF_MIN_DOCS) -> IndexSpec:
    """The FAISS index type for a corpus of `n_docs`, with its build and search parameters."""
    if n_docs >= ivf_min_docs:
        nlist = 1 << max(4, round(np.log2(4 * np.sqrt(n_docs))))  # ~4 sqrt(n), a power of 2
        return IndexSpec("ivf-flat-ip", {"nlist": nlist, "nprobe": max(16, nlist // 64)})
    if n_docs >= hnsw_min_docs:
        return IndexSpec("hnsw-ip", {"M": 32, "efConstruction": 200, "efSearch": 128})
    return IndexSpec("flat-ip")


def build_faiss_index(embeddings: np.ndarray, spec: IndexSpec = IndexSpec("flat-ip")) -> Any:
    """Inner-product search over unit vectors (cosine): exact, HNSW or IVF per `spec`."""
    import faiss

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    if spec.kind == "flat-ip":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw-ip":
        index = faiss.IndexHNSWFlat(dim, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.params["efConstruction"]
    elif spec.kind == "ivf-flat-ip":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, spec.params["nlist"],
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        raise ValueError(f"unknown index kind {spec.kind!r}")
    index.add(vectors)
    apply_search_params(index, spec)
    return index


def apply_search_params(index: Any, spec: IndexSpec) -> None:
    """Search-time knobs are not all stored in the FAISS file: set them from the manifest."""
    if spec.kind == "hnsw-ip":
        index.hnsw.efSearch = spec.params["efSearch"]
    elif spec.kind == "ivf-flat-ip":
        index.nprobe = spec.params["nprobe"]



class FaissIndex(VectorIndex):
    def __init__(self, index: Any, doc_ids: list[str], precision: str, spec: IndexSpec,
                 titles: list[str] | None = None,
                 manifest: IndexManifest | None = None) -> None:
        super().__init__(doc_ids, precision, spec.kind, spec.params, titles, manifest)
        self.index = index  # faiss.Index

    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: list[str], precision: str,
              spec: IndexSpec | None = None, titles: list[str] | None = None) -> FaissIndex:
        """In memory; `spec` defaults to the kind `choose_index` picks for the size."""
        if len(doc_ids) != len(vectors):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(vectors)} vectors")
        spec = spec or choose_index(len(doc_ids))
        return cls(build_faiss_index(vectors, spec), doc_ids, precision, spec, titles)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        if self.kind == "ivf-flat-ip":  # IVF lists need an id -> list map to look rows up
            self.index.make_direct_map()
        return self.index.reconstruct_batch(rows)


class FaissIndexStore(IndexStore):
    def __init__(self, root: Path, hnsw_min_docs: int = HNSW_MIN_DOCS,
                 ivf_min_docs: int = IVF_MIN_DOCS) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.live_link = root / "live"
        self.hnsw_min_docs, self.ivf_min_docs = hnsw_min_docs, ivf_min_docs

    @classmethod
    def at(cls, place: IndexPlace) -> FaissIndexStore:
        return cls(place.index_dir, place.hnsw_min_docs, place.ivf_min_docs)

    def describe(self) -> str:
        return f"FAISS files in {self.root}"

    def build(self, vectors: np.ndarray, doc_ids: list[str], *, precision: str,
              titles: list[str] | None = None) -> FaissIndex:
        spec = choose_index(len(doc_ids), self.hnsw_min_docs, self.ivf_min_docs)
        return FaissIndex.build(vectors, doc_ids, precision, spec, titles)

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        return sorted((p.name for p in self.versions_dir.iterdir() if VERSION.match(p.name)),
                      key=lambda v: int(v[1:]))

    def _directory(self, version: str) -> Path:
        return self.versions_dir / self.checked_version(version)

    def manifest(self, version: str) -> IndexManifest:
        path = self._directory(version) / "manifest.json"
        try:
            return IndexManifest(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise IndexUnavailable(f"index {version} is damaged: {exc}") from None

    def live_version(self) -> str | None:
        if not self.live_link.is_symlink():
            return None
        return Path(os.readlink(self.live_link)).name

    def save_version(self, index: VectorIndex, *, model_name: str, model_version: str,
                     corpus_fingerprint: str) -> IndexManifest:
        import faiss

        if not isinstance(index, FaissIndex):
            raise TypeError(f"a FAISS store saves FAISS indexes, not {type(index).__name__}")
        existing = self.versions()
        version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
        manifest = IndexManifest(
            version=version, model_name=model_name, model_version=str(model_version),
            dim=index.dim, n_docs=len(index.doc_ids), corpus_fingerprint=corpus_fingerprint,
            precision=index.precision, kind=index.kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), params=index.params,
            prompts=index.prompts,
            lexical=index.lexical.spec.describe() if index.lexical else None)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            faiss.write_index(index.index, str(staging / "index.faiss"))
            (staging / "doc_ids.json").write_text(json.dumps(index.doc_ids))
            # Titles travel with the index so a search never re-reads (and re-validates)
            # the corpus: a query is answered from this folder and the model alone.
            (staging / "titles.json").write_text(json.dumps(index.titles
                                                            or [""] * len(index.doc_ids)))
            written = [staging / name for name in FILES if name != "manifest.json"]
            if index.lexical:
                written += index.lexical.save(staging)
            (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1))
            for path in [*written, staging / "manifest.json"]:
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # no half-written version stays
            raise
        os.rename(staging, self.versions_dir / version)
        index.manifest = manifest
        return manifest

    def set_live(self, version: str) -> None:
        if not (self._directory(version) / "manifest.json").exists():
            raise IndexUnavailable(f"index {version} does not exist")
        tmp = self.root / f".live-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, self.live_link)

    def load(self, version: str | None = None) -> FaissIndex:
        import faiss

        version = self.version_to_load(version)
        manifest = self.manifest(version)
        directory = self._directory(version)
        try:
            index = faiss.read_index(str(directory / "index.faiss"))
            doc_ids = json.loads((directory / "doc_ids.json").read_text())
            titles_file = directory / "titles.json"
            titles = json.loads(titles_file.read_text()) if titles_file.exists() else None
        except (OSError, RuntimeError, ValueError) as exc:
            raise IndexUnavailable(f"index {version} is damaged: {exc}") from None
        spec = IndexSpec(manifest.kind, manifest.params)
        apply_search_params(index, spec)
        if index.ntotal != len(doc_ids) or index.ntotal != manifest.n_docs:
            raise IndexUnavailable(f"index {version} is damaged: {index.ntotal} vectors, "
                                   f"{len(doc_ids)} ids, manifest says {manifest.n_docs}")
        loaded = FaissIndex(index, doc_ids, manifest.precision, spec, titles, manifest)
        if manifest.lexical:
            loaded.lexical = load_lexical(directory, manifest.lexical, doc_ids, version)
        return loaded


def load_lexical(directory: Path, entry: dict[str, Any], doc_ids: list[str],
                 version: str) -> LexicalSide:
    """A hybrid version's BM25 side, which must index the dense side's documents."""
    from embedloop.search.hybrid import LexicalSide

    try:
        lexical = LexicalSide.load(directory, entry)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise IndexUnavailable(f"index {version}'s BM25 side is damaged: {exc}") from None
    if lexical.sparse.doc_ids != doc_ids:
        raise IndexUnavailable(f"index {version} is damaged: its BM25 side holds other "
                               f"documents than its vectors")
    return lexical
