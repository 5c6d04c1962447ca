"""Index backends: where document vectors are kept, versioned, and searched.

An `IndexStore` keeps index *versions*, each written complete before anyone can see it
and described by an `IndexManifest` (which model built it, over which corpus), plus one
`live` pointer that moves in a single step, so a reader (or a crash) sees the old index
or the new one, never a mix. Old versions stay for rollback.

A `VectorIndex` is what a search needs: document ids, titles, and the backend's
searchable structure. It is built in memory (the candidate is evaluated on one before
anything is saved) and saved as a version only when it is published.

FAISS files on local disk are the default backend (faiss_index.py). Another backend (a
vector database) implements the same two classes and is named in `BACKENDS`; nothing
else changes.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedloop.errors import IndexUnavailable

if TYPE_CHECKING:
    from embedloop.search.hybrid import LexicalSide

# Below ~100k documents exact search is fast enough (a 384-d flat scan of 100k vectors is
# ~40 MB and a few ms per query) and loses nothing; above it HNSW keeps queries in the
# sub-millisecond range; from a few million, IVF builds far faster and uses less memory.
HNSW_MIN_DOCS = 100_000
IVF_MIN_DOCS = 2_000_000


VERSION = re.compile(r"^v(\d{4,})$")  # an index version's name: v0001, v0002, ...


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
    # The prefix each role's text got (base_models.model_prompts); None: not recorded
    # (an index saved before prompts were).
    prompts: dict[str, str] | None = None
    # A hybrid version's lexical side: its analyser and fusion (search/hybrid.py); None:
    # dense only.
    lexical: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class VectorIndex(ABC):
    """Unit document vectors, searchable by inner product (cosine).

    `precision` is how the documents were encoded: queries are encoded the same way, so
    scores are comparable. `manifest` is None until the index is saved as a version.
    """

    def __init__(self, doc_ids: list[str], precision: str, kind: str, params: dict[str, int],
                 titles: list[str] | None = None,
                 manifest: IndexManifest | None = None) -> None:
        self.doc_ids = doc_ids
        self.precision = precision
        self.kind, self.params = kind, params
        self.titles = titles if titles and len(titles) == len(doc_ids) else None
        self.manifest = manifest
        # the model's prompts when it encoded the documents (set by whoever encodes them)
        self.prompts: dict[str, str] | None = manifest.prompts if manifest else None
        # BM25 over the same documents, fused with the dense ranking (search/hybrid.py);
        # set by whoever builds or loads a hybrid version
        self.lexical: LexicalSide | None = None

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n_queries, k); a row of -1 where fewer than k matched."""

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(n_queries, dim) unit vectors -> per query, up to k (doc_id, cosine) pairs."""
        k = min(k, len(self.doc_ids))
        if k == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        scores, rows = self._search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[(self.doc_ids[r], float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0]
                for rr, ss in zip(rows, scores, strict=True)]

    @abstractmethod
    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows`, (len(rows), dim) float32."""

    def vectors(self, doc_ids: list[str]) -> np.ndarray:
        """The stored vectors of `doc_ids`, in that order: what query-side training
        reuses instead of encoding documents again."""
        row_of = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        missing = [d for d in doc_ids if d not in row_of]
        if missing:
            raise KeyError(f"{len(missing)} documents are not in the index (first: "
                           f"{missing[0]!r})")
        rows = np.array([row_of[d] for d in doc_ids], dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._vectors(rows), dtype=np.float32)

    def require_prompts(self, model: Any) -> None:
        """A model searches only an index whose documents got its prompts, and whose
        queries get the ones the documents were matched with: e5 without "query: " (or a
        prompt where there was none) still returns results, quietly worse ones."""
        from embedloop.models.base_models import model_prompts

        if self.prompts is None:  # not recorded: nothing to hold it to
            return
        theirs = model_prompts(model)
        if theirs != self.prompts:
            name = self.manifest.version if self.manifest else "this index"
            raise IndexUnavailable(
                f"{name} was built with prompts {self.prompts or 'none'}, but the model "
                f"searching it uses {theirs or 'none'}; searching it is refused (rebuild the "
                f"index with this model, or search with the model that built it)")

    def require_model(self, model_name: str, model_version: str) -> None:
        """Vectors from one model are meaningless to another: refuse the mismatch."""
        m = self.manifest
        if m is None:
            raise IndexUnavailable("an unsaved index has no model on record")
        if (m.model_name, m.model_version) != (model_name, str(model_version)):
            raise IndexUnavailable(
                f"index {m.version} was built by {m.model_name} v{m.model_version}, not "
                f"{model_name} v{model_version}; searching it with that model is refused "
                f"(run `embedloop status`, then `embedloop rollback` or a retrain to realign)")


class IndexStore(ABC):
    """Versions of one deployment's index and its `live` pointer."""

    @classmethod
    @abstractmethod
    def at(cls, place: IndexPlace) -> IndexStore:
        """The store a deployment's index place describes (each backend reads its own)."""

    @abstractmethod
    def build(self, vectors: np.ndarray, doc_ids: list[str], *, precision: str,
              titles: list[str] | None = None) -> VectorIndex:
        """An index over `vectors`, in memory, of the kind this store picks for its size."""

    def as_built(self, index: VectorIndex) -> VectorIndex:
        """`index`, a stored version, searching as `build` would build it from the same
        vectors: the judge scores a candidate on a built index, so the incumbent must
        be scored on one too. A store whose stored versions search as their build did
        (FAISS files) returns `index` itself."""
        return index

    @abstractmethod
    def save_version(self, index: VectorIndex, *, model_name: str, model_version: str,
                     corpus_fingerprint: str) -> IndexManifest:
        """Store `index` as a new version, complete, without making it live."""

    @abstractmethod
    def load(self, version: str | None = None) -> VectorIndex:
        """A stored version (default: the live one), checked for damage."""

    @abstractmethod
    def versions(self) -> list[str]:
        """Stored versions, oldest first."""

    @abstractmethod
    def manifest(self, version: str) -> IndexManifest: ...

    @abstractmethod
    def live_version(self) -> str | None: ...

    @abstractmethod
    def set_live(self, version: str) -> None:
        """Point `live` at `version` in one step; a missing version raises IndexUnavailable."""

    @abstractmethod
    def describe(self) -> str:
        """Where the versions live, for status lines and logs."""

    @staticmethod
    def checked_version(version: str) -> str:
        """Versions are names a store wrote ("v0003"): nothing else becomes a file name
        or a collection name."""
        if not VERSION.fullmatch(version):
            raise IndexUnavailable(f"not an index version: {version!r}")
        return version

    def version_to_load(self, version: str | None) -> str:
        """`version`, or the live one; none yet is a clear error."""
        version = version or self.live_version()
        if version is None:
            raise IndexUnavailable("there is no live index yet: run `embedloop retrain` first")
        return version

    def latest_for_model(self, model_name: str, model_version: str) -> str | None:
        """The newest version built by that model: the one promotion or rollback makes live."""
        for version in reversed(self.versions()):
            m = self.manifest(version)
            if (m.model_name, m.model_version) == (model_name, str(model_version)):
                return version
        return None


@dataclass(frozen=True)
class IndexPlace:
    """Where a deployment's indexes live and how they are built: what a backend reads from
    the settings (`Settings.index_place`), so this package never needs the settings."""

    backend: str  # a name in BACKENDS
    index_dir: Path  # FAISS: versions as folders
    state_dir: Path  # Milvus Lite: its database file, when no server is named
    model_name: str  # Milvus: collections are named after the model
    milvus_uri: str = ""
    hnsw_min_docs: int = HNSW_MIN_DOCS
    ivf_min_docs: int = IVF_MIN_DOCS


def open_index_store(place: IndexPlace) -> IndexStore:
    """The configured backend (`index_backend`; config.py checks the name)."""
    module, name = BACKENDS[place.backend].split(":")
    return getattr(importlib.import_module(module), name).at(place)


# name -> "module:class"; imported on use, so a backend's client library is only needed by
# the deployments that choose it.
BACKENDS = {"faiss": "embedloop.index.faiss_index:FaissIndexStore",
            "milvus": "embedloop.index.milvus_index:MilvusIndexStore"}
