"""The document corpus: BEIR-style JSONL or Parquet with `_id`|`doc_id`, `title`, `text`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from embedloop.errors import CorpusInvalid, InputError
from embedloop.ingest.schema import is_missing
from embedloop.ingest.validation import validate_corpus


def load_corpus(path: str | Path) -> pd.DataFrame:
    """Returns doc_id, title, text (str), in file order. Fails loudly on an unreadable
    file or a corpus that breaks `expectations/corpus.json`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"corpus file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            with path.open(encoding="utf-8") as f:
                frame = pd.DataFrame([json.loads(line) for line in f if line.strip()])
    except (ValueError, OSError) as exc:
        raise InputError(f"corpus {path.name} is not readable JSONL/Parquet ({exc})") from None
    if "doc_id" not in frame.columns and "_id" in frame.columns:
        frame = frame.rename(columns={"_id": "doc_id"})
    if "doc_id" not in frame.columns:
        raise InputError(f"corpus {path.name} has no _id or doc_id column")
    for column in ("title", "text"):
        if column not in frame.columns:
            frame[column] = ""
    frame = frame[["doc_id", "title", "text"]].copy()
    frame["doc_id"] = frame["doc_id"].map(lambda v: None if is_missing(v) else str(v))
    outcome = validate_corpus(frame)
    if not outcome.success:
        problems = []
        for _, reason, rows in outcome.failures:
            examples = ", ".join(repr(frame.at[i, "doc_id"]) for i in rows[:3])
            problems.append(f"{reason} ({len(rows)} rows{': ' + examples if examples else ''})")
        raise CorpusInvalid(f"corpus {path.name} is invalid: " + "; ".join(problems))
    frame["title"] = frame["title"].fillna("").astype(str)
    frame["text"] = frame["text"].fillna("").astype(str)
    return frame.reset_index(drop=True)


def document_texts(corpus: pd.DataFrame) -> list[str]:
    """Title and text joined by a space, as the MTEB/BEIR reference scores do."""
    return [f"{t} {x}".strip() for t, x in zip(corpus["title"], corpus["text"], strict=True)]


def corpus_fingerprint(corpus: pd.DataFrame) -> str:
    """Identifies the corpus content an index was built from."""
    digest = hashlib.sha256()
    for doc_id, text in zip(corpus["doc_id"], document_texts(corpus), strict=True):
        digest.update(doc_id.encode() + b"\x00" + text.encode() + b"\x01")
    return digest.hexdigest()[:16]


def load_judged_queries(path: str | Path, doc_ids: set[str]) -> dict[str, dict[str, float]]:
    """The team's own judged queries (`judged_queries`): JSONL, one query a line,
    {"query": "text", "relevant": {"doc id": gain, ...}} or {"query", "relevant": [ids]}.
    Returns {query text: {doc id: gain}}. A line that cannot be read, or that names a
    document not in the corpus, fails with its line number: a judgement of nothing
    would quietly score every candidate zero on that query."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"judged_queries file {path} does not exist")
    judged: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                query, relevant = str(row["query"]).strip(), row["relevant"]
                gains = ({str(d): float(g) for d, g in relevant.items()}
                         if isinstance(relevant, dict) else {str(d): 1.0 for d in relevant})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{path.name} line {number}: not a judged query "
                                 f"{{\"query\", \"relevant\"}} ({type(exc).__name__}: {exc})"
                                 ) from None
            unknown = sorted(set(gains) - doc_ids)
            if not query or unknown:
                raise InputError(f"{path.name} line {number}: " + (
                    f"documents not in the corpus: {', '.join(unknown[:5])}" if unknown
                    else "the query is empty"))
            judged.setdefault(query, {}).update({d: g for d, g in gains.items() if g > 0})
    return {q: g for q, g in judged.items() if g}
