"""The bundled demo: API-docs search over the docstrings of installed libraries (or, with
`--beir`, a judged retrieval set in BEIR layout, in any language).

Real text that exists offline on every install: each public function or method of
a few libraries is a document (title: its qualified name; text: its docstring
without the summary line). Users search with the summary line in their own words,
a lexical (BM25) search engine shows ten results, and clicks follow the
position-based model (examined with probability 1/position; relevant results
clicked 90% of the time, others 6%). About 2% of rows are broken the way real
logs break, so the quarantine has something to show. Deterministic for a seed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import random
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# module -> objects whose public callables become documents
SOURCES = {
    "pandas": ["DataFrame", "Series", "Index", None],
    "numpy": [None, "ndarray", "linalg", "random"],
    "pathlib": ["Path"],
    "collections": [None, "Counter", "OrderedDict", "deque"],
    "itertools": [None],
    "functools": [None],
    "json": [None],
    "re": [None],
    "os": [None, "path"],
    "shutil": [None],
    "datetime": ["datetime", "timedelta", "date"],
    "statistics": [None],
    "textwrap": [None],
    "string": [None],
    "math": [None],
}
# CJK text has no spaces: its terms are single characters and character bigrams.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
STOPWORDS = set("a an the of to in on for and or is are be by with as at from this that it its "
                "if into than then return returns given using use".split())
WORD = re.compile(r"[a-z0-9]+")


def _doc_entries(module_name: str, attr: str | None) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    owner = getattr(module, attr) if attr else module
    prefix = f"{module_name}.{attr}" if attr else module_name
    entries = []
    for name in sorted(dir(owner)):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(owner, name)
        except Exception:  # some attributes raise on access; they are not documents
            continue
        if callable(obj) and not inspect.isclass(obj) or (attr and inspect.isroutine(obj)):
            entries.append((f"{prefix}.{name}", obj))
    return entries


def _split_docstring(doc: str) -> tuple[str, str]:
    """(summary line, the rest), both whitespace-normalized."""
    doc = inspect.cleandoc(doc)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
    if not paragraphs:
        return "", ""
    summary = " ".join(paragraphs[0].split())
    body = " ".join(" ".join(paragraphs[1:]).split())
    return summary, body


def build_docstring_corpus(max_docs: int = 900, max_chars: int = 900) -> list[dict[str, str]]:
    """Documents with a usable summary (the future query) and body (the text)."""
    seen_text: set[str] = set()
    docs = []
    for module_name, attrs in SOURCES.items():
        for attr in attrs:
            for qualname, obj in _doc_entries(module_name, attr):
                doc = inspect.getdoc(obj) or ""
                summary, body = _split_docstring(doc)
                words = WORD.findall(summary.lower())
                if not (4 <= len(words) <= 30) or len(body.split()) < 15:
                    continue
                if summary in seen_text or "(" in summary[:1]:  # aliases, signatures
                    continue
                seen_text.add(summary)
                docs.append({"_id": qualname, "title": qualname, "text": body[:max_chars],
                             "summary": summary})
    rng = random.Random(0)
    rng.shuffle(docs)
    return sorted(docs[:max_docs], key=lambda d: d["_id"])


def paraphrase(summary: str, rng: random.Random) -> str:
    """What a user types for a summary: lowercased, sometimes only its content words."""
    words = WORD.findall(summary.lower())
    if rng.random() < 0.5:
        content = [w for w in words if w not in STOPWORDS]
        words = content if len(content) >= 2 else words
    if len(words) > 8 and rng.random() < 0.5:
        words = words[:8]
    return " ".join(words)


def terms(text: str) -> list[str]:
    """Lowercase alphanumeric words, and the characters and bigrams of CJK runs."""
    found = WORD.findall(text.lower())
    for run in CJK.findall(text):
        found += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
    return found


class BM25:
    """Okapi BM25 over `terms`: the 'current search engine'."""

    def __init__(self, texts: list[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, text in enumerate(texts):
            counts = Counter(terms(text))
            self.lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                self.postings[term].append((i, tf))
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        self.n, self.k1, self.b = len(texts), k1, b

    def top(self, query: str, k: int) -> list[int]:
        scores: dict[int, float] = defaultdict(float)
        for term in set(terms(query)):
            plist = self.postings.get(term, [])
            idf = math.log(1 + (self.n - len(plist) + 0.5) / (len(plist) + 0.5))
            for i, tf in plist:
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                scores[i] += idf * tf * (self.k1 + 1) / norm
        return [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _malform(row: dict[str, Any], rng: random.Random, earlier: list[str]) -> dict[str, Any]:
    kind = rng.choice(["null_query", "blank_query", "unknown_doc", "bad_position", "bad_ts",
                       "future_ts", "bad_clicked", "control_chars", "duplicate"])
    bad = dict(row)
    if kind == "null_query":
        bad["query"] = None
    elif kind == "blank_query":
        bad["query"] = "  "
    elif kind == "unknown_doc":
        bad["doc_id"] = "pandas.DataFrame.no_such_method"
    elif kind == "bad_position":
        bad["position"] = rng.choice([0, -1, "second"])
    elif kind == "bad_ts":
        bad["ts"] = "yesterday"
    elif kind == "future_ts":
        bad["ts"] = "2999-01-01T00:00:00Z"
    elif kind == "bad_clicked":
        bad["clicked"] = "maybe"
    elif kind == "control_chars":
        bad["query"] = f"{row['query']}\x00\x1b"
    elif earlier:
        bad["event_id"] = rng.choice(earlier)
    return bad


def simulate_logs(docs: list[dict[str, str]], *, n_queries: int = 640, sessions: int = 3,
                  shown: int = 10, malformed_rate: float = 0.02, seed: int = 0,
                  start: datetime = datetime(2026, 1, 5, tzinfo=UTC), days: int = 7,
                  asked: list[tuple[str, int]] | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Interaction-log rows (the contract of embedloop.ingest.logs) and the malformed ids.
    Users ask for a document with its summary in their words, or, where `asked` gives
    them, with those (query text, index of the document it is about) as written."""
    rng = random.Random(seed)
    engine = BM25([f"{d['title']} {d['text']}" for d in docs])
    if asked is None:
        targets = rng.sample(range(len(docs)), min(n_queries, len(docs)))
        plan = [(t, s) for t in targets for s in range(sessions)]
        rng.shuffle(plan)
        queries = {t: paraphrase(docs[t]["summary"], rng) for t in targets}
        sessions_asked = [(queries[t], t) for t, _ in plan]
    else:
        chosen = rng.sample(asked, min(n_queries, len(asked)))
        plan_asked = [(a, s) for a in chosen for s in range(sessions)]
        rng.shuffle(plan_asked)
        sessions_asked = [a for a, _ in plan_asked]
    step = timedelta(days=days) / max(1, len(sessions_asked))
    rows: list[dict[str, Any]] = []
    malformed: list[str] = []
    for n, (query, target) in enumerate(sessions_asked):
        ranked = engine.top(query, shown)
        ranked += [i for i in rng.sample(range(len(docs)), shown * 2) if i not in ranked]
        ranked = ranked[:shown]
        if target not in ranked and rng.random() < 0.7:  # the live ranker is partly right
            ranked[rng.randrange(shown)] = target
        when = start + step * n
        for position, i in enumerate(ranked, start=1):
            examined = rng.random() < 1.0 / position
            clicked = examined and rng.random() < (0.9 if i == target else 0.06)
            row = {"event_id": f"demo-{len(rows) + 1:07d}",
                   "ts": (when + timedelta(seconds=position)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "session_id": f"demo-s{n:06d}", "query": query, "doc_id": docs[i]["_id"],
                   "position": position, "clicked": clicked,
                   "dwell_ms": rng.randint(1500, 90000) if clicked else None}
            if rng.random() < malformed_rate:
                row = _malform(row, rng, [r["event_id"] for r in rows[-300:]])
                malformed.append(row["event_id"])
            rows.append(row)
    return rows, malformed


def beir_demo_corpus(folder: Path) -> tuple[list[dict[str, str]], list[tuple[str, int]]]:
    """A BEIR folder's documents, and its train queries with the document each is about."""
    def rows(path: Path) -> list[dict[str, Any]]:
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    docs = [{"_id": str(d["_id"]), "title": d.get("title") or "", "text": d.get("text") or ""}
            for d in rows(folder / "corpus.jsonl")]
    row_of = {d["_id"]: i for i, d in enumerate(docs)}
    text_of = {str(q["_id"]): q["text"] for q in rows(folder / "queries.jsonl")}
    asked = []
    for line in (folder / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query, doc, score = line.split("\t")[:3]
        if int(score) > 0 and query in text_of and doc in row_of:
            asked.append((text_of[query], row_of[doc]))
    return docs, asked


def write_demo_data(out_dir: Path, seed: int = 0, beir: Path | None = None) -> dict[str, Any]:
    """corpus.jsonl, logs/week-1.jsonl and manifest.json under `out_dir`: over library
    docstrings, or over the documents and train queries of a BEIR folder."""
    if beir is None:
        docs, asked = build_docstring_corpus(), None
    else:
        docs, asked = beir_demo_corpus(beir)
    rows, malformed = simulate_logs(docs, seed=seed, asked=asked)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    with (out_dir / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"_id": d["_id"], "title": d["title"], "text": d["text"]},
                               ensure_ascii=False) + "\n")
    with (out_dir / "logs" / "week-1.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {"documents": len(docs), "rows": len(rows),
                "clicks": sum(r.get("clicked") is True for r in rows),
                "malformed_event_ids": malformed, "seed": seed,
                "source": str(beir) if beir else "library docstrings"}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
