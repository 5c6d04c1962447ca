"""The lexical side of an index version: a BM25 index of the same documents and how its
ranking is fused with the dense one.

It lives in the index version's folder, beside the dense vectors, and is written before
that folder is renamed into place: promotion, rollback and the canary move the two sides
together, and a crash between their saves leaves no version at all (index/faiss_index.py).
The manifest records the analyser and the fusion, so a version always searches as it was
built and judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from embedloop.search.fusion import Fusion
from embedloop.search.sparse import Analyzer, SparseIndex

FOLDER = "sparse"  # inside an index version's folder


@dataclass(frozen=True)
class LexicalSpec:
    """What a deployment's hybrid indexes are built with (the settings' `retriever`,
    `fusion_*` and `lexical_*`)."""

    analyzer: Analyzer = Analyzer()
    fusion: Fusion = Fusion()

    def describe(self) -> dict[str, Any]:
        """As the manifest records it."""
        return {"analyzer": asdict(self.analyzer), "fusion": asdict(self.fusion)}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> LexicalSpec:
        return cls(Analyzer(**entry["analyzer"]), Fusion(**entry["fusion"]))

    def build(self, texts: Sequence[str], doc_ids: Sequence[str]) -> LexicalSide:
        return LexicalSide(SparseIndex.build(texts, doc_ids, self.analyzer), self.fusion)


class LexicalIndex(Protocol):
    """BM25 over an index version's documents: bm25s in memory or memory-mapped
    (SparseIndex), or the same weights in a vector store (index/milvus_index.py)."""

    analyzer: Analyzer
    doc_ids: list[str]

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]: ...


@dataclass
class LexicalSide:
    sparse: LexicalIndex
    fusion: Fusion

    @property
    def spec(self) -> LexicalSpec:
        return LexicalSpec(self.sparse.analyzer, self.fusion)

    def save(self, version_folder: Path) -> list[Path]:
        """Written into a version folder being staged; returns the files, to be synced."""
        folder = version_folder / FOLDER
        if not isinstance(self.sparse, SparseIndex):
            raise TypeError(f"a BM25 side stored as {type(self.sparse).__name__} is saved "
                            f"where it lives")
        self.sparse.save(folder)
        return sorted(p for p in folder.iterdir() if p.is_file())

    @classmethod
    def load(cls, version_folder: Path, entry: dict[str, Any]) -> LexicalSide:
        """Memory-mapped: a large corpus's BM25 matrix is paged in as queries touch it."""
        spec = LexicalSpec.from_manifest(entry)
        sparse = SparseIndex.load(version_folder / FOLDER, mmap=True)
        if sparse.analyzer != spec.analyzer:
            raise ValueError(f"its BM25 index was built with {sparse.analyzer}, the manifest "
                             f"says {spec.analyzer}")
        return cls(sparse, spec.fusion)

    def fuse(self, dense: Sequence[Sequence[tuple[str, float]]],
             sparse: Sequence[Sequence[tuple[str, float]]], k: int
             ) -> list[list[tuple[str, float]]]:
        """Each query's dense and BM25 rankings (each at least `depth` deep, or all a side
        found) fused into its top k."""
        fusion = self.fusion if k <= self.fusion.depth else replace(self.fusion, depth=k)
        return [fusion.fuse(d, s, k) for d, s in zip(dense, sparse, strict=True)]

    def with_fusion(self, fusion: Fusion) -> LexicalSide:
        """The same BM25 index fused otherwise (a candidate's learned weight)."""
        return LexicalSide(self.sparse, fusion)
