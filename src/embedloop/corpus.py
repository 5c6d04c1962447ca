"""The document corpus: BEIR-style JSONL or Parquet with `_id`|`doc_id`, `title`, `text`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from embedloop.errors import CorpusInvalid, InputError
from embedloop.log_schema import is_missing
from embedloop.validation import validate_corpus


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
