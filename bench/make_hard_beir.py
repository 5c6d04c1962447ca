"""Two harder retrieval sets in BEIR layout, made from SciFact (../shared), for the
recipe to be measured where the default one drifts (issue 25). Written under --out,
never into the repository; the shared data is only read.

paraphrase: SciFact's corpus plus an unjudged near-duplicate of every judged document
  and of as many other documents: the same title, one sentence dropped, the rest in
  another order. Like a corpus of short questions full of near-paraphrases, the
  ranker shows the twin beside the original, users click it only by accident, and a
  negative mined next to a positive is often its twin.
long: whole paragraphs as queries. A document's abstract is split in two: its first
  half is the query, its title and second half the one relevant document (the corpus
  holds every document's second half). Like argument retrieval, the query is long and
  shares topic, not wording, with its answer.

    .venv/bin/python bench/make_hard_beir.py --kind paraphrase --out /tmp/hard/paraphrase
    .venv/bin/python bench/make_hard_beir.py --kind long --out /tmp/hard/long
    .venv/bin/python -u bench/protocol.py --beir /tmp/hard/paraphrase --out /tmp/p-para --no-ceiling
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "scifact"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [(q, d, int(s)) for q, d, s in rows]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def near_duplicate(doc: dict, rng: random.Random) -> dict:
    """The same title; one sentence dropped (of three or more) and the rest rotated."""
    parts = sentences(doc.get("text", ""))
    if len(parts) >= 3:
        parts.pop(rng.randrange(len(parts)))
    if len(parts) >= 2:
        turn = rng.randrange(1, len(parts))
        parts = parts[turn:] + parts[:turn]
    return {"_id": f"{doc['_id']}-twin", "title": doc.get("title", ""), "text": " ".join(parts)}


def paraphrase(source: Path, seed: int) -> tuple[list[dict], list[dict], dict[str, list]]:
    corpus = read_jsonl(source / "corpus.jsonl")
    qrels = {split: read_qrels(source / "qrels" / f"{split}.tsv") for split in ("train", "test")}
    judged = {d for rows in qrels.values() for _, d, _ in rows}
    rng = random.Random(seed)
    others = sorted(d["_id"] for d in corpus if d["_id"] not in judged)
    twinned = judged | set(rng.sample(others, min(len(others), len(judged))))
    twins = [near_duplicate(d, rng) for d in corpus if d["_id"] in twinned]
    return corpus + twins, read_jsonl(source / "queries.jsonl"), qrels


def long_queries(source: Path, queries_wanted: int,
                 test_share: float) -> tuple[list[dict], list[dict], dict[str, list]]:
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for doc in read_jsonl(source / "corpus.jsonl"):
        parts = sentences(doc.get("text", ""))
        if len(parts) >= 6 and len(queries) < queries_wanted:
            half = len(parts) // 2
            qid = f"q{doc['_id']}"
            queries.append({"_id": qid, "text": " ".join(parts[:half])})
            corpus.append({"_id": doc["_id"], "title": doc.get("title", ""),
                           "text": " ".join(parts[half:])})
            digest = hashlib.sha256(qid.encode()).digest()
            split = "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"
            qrels[split].append((qid, doc["_id"], 1))
        else:  # a distractor: the document as it is
            corpus.append({"_id": doc["_id"], "title": doc.get("title", ""),
                           "text": doc.get("text", "")})
    return corpus, queries, qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["paraphrase", "long"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--source", type=Path, default=SCIFACT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=1500, help="long: how many queries")
    args = ap.parse_args()
    if args.kind == "paraphrase":
        corpus, queries, qrels = paraphrase(args.source, args.seed)
    else:
        corpus, queries, qrels = long_queries(args.source, args.queries, test_share=0.25)
    (args.out / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus", corpus), ("queries", queries)):
        with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in rows)]
        (args.out / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n",
                                                         encoding="utf-8")
    print(f"{args.kind}: {len(corpus)} documents, {len(queries)} queries, "
          + ", ".join(f"{split} {len(rows)} judgements" for split, rows in qrels.items()))


if __name__ == "__main__":
    main()
