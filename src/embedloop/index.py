"""Versioned FAISS indexes with an atomically swapped `live` pointer.

    indexes/
      versions/v0001/  index.faiss  doc_ids.json  manifest.json
      versions/v0002/  ...
      live -> versions/v0002        (a symlink, replaced with one rename)

A version directory is complete before it is renamed into place, and `live`
moves with a single `os.replace`, so a reader (or a crash) sees the old index or
the new one, never a mix. Old versions stay for rollback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedloop.errors import IndexUnavailable

VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class IndexManifest:
    version: str
    model_name: str
    model_version: str  # registry version of the model that encoded the corpus
    dim: int
    n_docs: int
    corpus_fingerprint: str
    precision: str
    kind: str
    created_at: str
    params: dict[str, int] = field(default_factory=dict)  # how `kind` was built and searched

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedIndex:
    manifest: IndexManifest
    index: Any  # faiss.Index
    doc_ids: list[str]
    titles: list[str] | None = None  # shown by search; None for indexes written before

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(n_queries, dim) unit vectors -> per query, up to k (doc_id, cosine) pairs."""
        k = min(k, len(self.doc_ids))
        if k == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[(self.doc_ids[r], float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0]
                for rr, ss in zip(rows, scores, strict=True)]

    def require_model(self, model_name: str, model_version: str) -> None:
        """Vectors from one model are meaningless to another: refuse the mismatch."""
        m = self.manifest
        if (m.model_name, m.model_version) != (model_name, str(model_version)):
            raise IndexUnavailable(
                f"index {m.version} was built by {m.model_name} v{m.model_version}, not "
                f"{model_name} v{model_version}; searching it with that model is refused "
                f"(run `embedloop status`, then `embedloop rollback` or a retrain to realign)")


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat-ip | hnsw-ip | ivf-flat-ip
    params: dict[str, int] = field(default_factory=dict)


# Below ~100k documents exact search is fast enough (a 384-d flat scan of 100k vectors is
# ~40 MB and a few ms per query) and loses nothing; above it HNSW keeps queries in the
# sub-millisecond range; from a few million, IVF builds far faster and uses less memory.
HNSW_MIN_DOCS = 100_000
IVF_MIN_DOCS = 2_000_000


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


class IndexStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.live_link = root / "live"

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        return sorted((p.name for p in self.versions_dir.iterdir() if VERSION.match(p.name)),
                      key=lambda v: int(v[1:]))

    def _directory(self, version: str) -> Path:
        """Versions are names this store wrote ("v0003"): nothing else becomes a path."""
        if not VERSION.fullmatch(version):
            raise IndexUnavailable(f"not an index version: {version!r}")
        return self.versions_dir / version

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

    def latest_for_model(self, model_name: str, model_version: str) -> str | None:
        for version in reversed(self.versions()):
            m = self.manifest(version)
            if (m.model_name, m.model_version) == (model_name, str(model_version)):
                return version
        return None

    def write_version(self, embeddings: np.ndarray, doc_ids: list[str], *, model_name: str,
                      model_version: str, corpus_fingerprint: str, precision: str,
                      spec: IndexSpec | None = None,
                      titles: list[str] | None = None) -> IndexManifest:
        """Build and store a new version without making it live."""
        import faiss

        if len(doc_ids) != len(embeddings):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(embeddings)} vectors")
        spec = spec or choose_index(len(doc_ids))
        existing = self.versions()
        version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
        manifest = IndexManifest(
            version=version, model_name=model_name, model_version=str(model_version),
            dim=int(embeddings.shape[1]), n_docs=len(doc_ids),
            corpus_fingerprint=corpus_fingerprint, precision=precision, kind=spec.kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), params=spec.params)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        faiss.write_index(build_faiss_index(embeddings, spec), str(staging / "index.faiss"))
        (staging / "doc_ids.json").write_text(json.dumps(doc_ids))
        # Titles travel with the index so a search never re-reads (and re-validates) the
        # corpus: a query is answered from this folder and the model alone.
        (staging / "titles.json").write_text(json.dumps(titles or [""] * len(doc_ids)))
        (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1))
        for name in ("index.faiss", "doc_ids.json", "titles.json", "manifest.json"):
            with (staging / name).open("rb") as f:
                os.fsync(f.fileno())
        os.rename(staging, self.versions_dir / version)
        return manifest

    def set_live(self, version: str) -> None:
        """Point `live` at `version` in one atomic rename."""
        if not (self._directory(version) / "manifest.json").exists():
            raise IndexUnavailable(f"index {version} does not exist")
        tmp = self.root / f".live-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, self.live_link)

    def load(self, version: str | None = None) -> LoadedIndex:
        import faiss

        version = version or self.live_version()
        if version is None:
            raise IndexUnavailable("there is no live index yet: run `embedloop retrain` first")
        manifest = self.manifest(version)
        directory = self._directory(version)
        try:
            index = faiss.read_index(str(directory / "index.faiss"))
            doc_ids = json.loads((directory / "doc_ids.json").read_text())
            titles_file = directory / "titles.json"
            titles = json.loads(titles_file.read_text()) if titles_file.exists() else None
        except (OSError, RuntimeError, ValueError) as exc:
            raise IndexUnavailable(f"index {version} is damaged: {exc}") from None
        apply_search_params(index, IndexSpec(manifest.kind, manifest.params))
        if index.ntotal != len(doc_ids) or index.ntotal != manifest.n_docs:
            raise IndexUnavailable(f"index {version} is damaged: {index.ntotal} vectors, "
                                   f"{len(doc_ids)} ids, manifest says {manifest.n_docs}")
        return LoadedIndex(manifest=manifest, index=index, doc_ids=doc_ids,
                           titles=titles if titles and len(titles) == len(doc_ids) else None)
