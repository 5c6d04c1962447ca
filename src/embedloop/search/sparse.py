"""The lexical side of search: BM25 over analysed text (bm25s), saved and loaded
memory-mapped.

What a small embedding model misses, lexical matching finds: rare terms, drug names,
codes, identifiers. The analyser is one for every language, so a corpus that mixes
scripts needs no detection:
- text in scripts with spaces between words: lowercased words of two or more letters or
  digits, stopwords dropped, Snowball-stemmed (`language`, English by default);
- Chinese, Japanese and Korean runs: character unigrams and bigrams (`cjk="bigrams"`),
  or jieba's words (`cjk="jieba"`, through rjieba). BENCHMARKS.md ("Hybrid retrieval")
  measures both on cmrc2018.

Documents are analysed as queries are, with the analyser recorded beside the index, so
a query is always analysed as the index it searches was built.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Han (with extensions A and compatibility), kana, Hangul: scripts written without spaces
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_WORD = re.compile(r"\w\w+")
ANALYZER_FILE = "analyzer.json"
CJK_MODES = ("bigrams", "jieba")


@dataclass(frozen=True)
class Analyzer:
    """How text becomes BM25 terms; see the module's docstring."""

    language: str = "english"  # Snowball stemmer and stopwords; "none": neither
    cjk: str = "bigrams"

    def __post_init__(self) -> None:
        if self.cjk not in CJK_MODES:
            raise ValueError(f"cjk must be one of {CJK_MODES}, not {self.cjk!r}")
        if self.language != "none":
            self._stem  # noqa: B018 - fail here, naming the language, not at the first query

    def terms(self, text: str) -> list[str]:
        out: list[str] = []
        start = 0
        for run in _CJK.finditer(text):
            out += self._words(text[start:run.start()])
            out += self._cjk_terms(run.group())
            start = run.end()
        out += self._words(text[start:])
        return out

    def _words(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stopwords]
        return self._stem(words) if words and self.language != "none" else words

    def _cjk_terms(self, run: str) -> list[str]:
        if self.cjk == "jieba":
            return [w for w in _jieba_cut(run) if w.strip()]
        return list(run) + [run[i:i + 2] for i in range(len(run) - 1)]

    @functools.cached_property
    def _stem(self) -> Any:
        import Stemmer

        if self.language not in Stemmer.algorithms():
            raise ValueError(f"no stemmer for language {self.language!r}; one of "
                             f"{', '.join(Stemmer.algorithms())}, or 'none'")
        return Stemmer.Stemmer(self.language).stemWords

    @functools.cached_property
    def _stopwords(self) -> frozenset[str]:
        from bm25s import stopwords

        name = "EN" if self.language == "english" else self.language.upper()
        return frozenset(getattr(stopwords, f"STOPWORDS_{name}", ()))


def _jieba_cut(text: str) -> list[str]:
    import rjieba

    return list(rjieba.cut(text))


def query_vector(analyzer: Analyzer, vocabulary: dict[str, int], query: str
                 ) -> dict[int, float]:
    """`query`'s term counts by term id; terms the corpus lacks are left out."""
    counts: dict[int, float] = {}
    for term in analyzer.terms(query):
        if term in vocabulary:
            counts[vocabulary[term]] = counts.get(vocabulary[term], 0.0) + 1.0
    return counts


@dataclass
class SparseIndex:
    """BM25 scores of every term in every document, and the analyser that made them."""

    bm25: Any  # bm25s.BM25
    doc_ids: list[str]
    analyzer: Analyzer

    @classmethod
    def build(cls, texts: Sequence[str], doc_ids: Sequence[str],
              analyzer: Analyzer | None = None, k1: float = 1.2, b: float = 0.75,
              ) -> SparseIndex:
        """BM25 with Lucene's scoring (k1 1.2, b 0.75: Lucene's and Elasticsearch's
        defaults)."""
        import bm25s

        analyzer = analyzer or Analyzer()
        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        bm25.index([analyzer.terms(t) for t in texts], show_progress=False)
        return cls(bm25, list(doc_ids), analyzer)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for `query` (0 where no term matches)."""
        ids = self.bm25.get_tokens_ids(self.analyzer.terms(query))
        if not ids:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return self.bm25.get_scores_from_ids(ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to k (doc id, score) with score > 0, best first; equal scores in
        doc id order, so a ranking is the same every time."""
        out = []
        for query in queries:
            scores = self.scores(query)
            matched = np.flatnonzero(scores > 0)
            if len(matched) > k:  # all that tie with the k-th too, then order them
                kth = np.partition(scores[matched], -k)[-k]
                matched = matched[scores[matched] >= kth]
            order = matched[np.lexsort((self._id_order[matched], -scores[matched]))][:k]
            out.append([(self.doc_ids[i], float(scores[i])) for i in order])
        return out

    # -- as sparse vectors: what a vector store searches (index/milvus_index.py) ---------
    # bm25s keeps each term's weight in each document (IDF and length norm folded in),
    # and a query's score is the sum of its terms' weights: the dot product of the
    # document's weight vector and the query's term counts, by term id. A store that
    # searches sparse vectors by inner product ranks exactly as `search` does.
    @property
    def vocabulary(self) -> dict[str, int]:
        """Term -> term id (the sparse vectors' dimensions)."""
        return {str(term): int(i) for term, i in self.bm25.vocab_dict.items()}

    def document_vectors(self, rows: Sequence[int]) -> list[dict[int, float]]:
        """The BM25 weight vectors of documents `rows`, {term id: weight}."""
        by_doc = self._by_document
        return [{int(t): float(w) for t, w in zip(
                    by_doc.indices[by_doc.indptr[r]:by_doc.indptr[r + 1]],
                    by_doc.data[by_doc.indptr[r]:by_doc.indptr[r + 1]], strict=True)}
                for r in rows]

    @functools.cached_property
    def _by_document(self) -> Any:
        """bm25s's weights (kept by term: CSC, indptr over terms) by document, once: an
        upload in chunks reads each document's row instead of scanning every weight."""
        from scipy.sparse import csc_matrix

        scores = self.bm25.scores
        shape = (int(scores["num_docs"]), len(scores["indptr"]) - 1)
        return csc_matrix((scores["data"], scores["indices"], scores["indptr"]),
                          shape=shape).tocsr()

    def query_vector(self, query: str) -> dict[int, float]:
        return query_vector(self.analyzer, self.vocabulary, query)

    @functools.cached_property
    def _id_order(self) -> np.ndarray:
        """Each document's place in doc id order: the tie-break."""
        order = np.empty(len(self.doc_ids), dtype=np.int64)
        order[np.argsort(np.array(self.doc_ids, dtype=object), kind="stable")] = np.arange(
            len(self.doc_ids))
        return order

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(folder), show_progress=False)
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))
        (folder / ANALYZER_FILE).write_text(json.dumps(asdict(self.analyzer)))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> SparseIndex:
        import bm25s

        bm25 = bm25s.BM25.load(str(folder), mmap=mmap, show_progress=False)
        analyzer = Analyzer(**json.loads((folder / ANALYZER_FILE).read_text()))
        return cls(bm25, json.loads((folder / "doc_ids.json").read_text()), analyzer)
