"""How often a mined hard negative is in truth relevant, with and without the
near-duplicate filter (`negative_max_similarity`), measured on a BEIR set's judged train
queries with the base model's index of a finished protocol run (its v1).

Each judged (query, document) pair is mined as the pipeline mines a click on it
(pairs.mine_corpus_negatives: the champion's top 50, the relative margin, the clicked
document never a negative). A negative is counted as relevant when the qrels judge it
relevant to the query, and as a twin when it is a near-duplicate that
bench/make_hard_beir.py made of a judged document ("<id>-twin").

    .venv/bin/python bench/negatives.py --out /tmp/p25/para-new --beir /tmp/hard/paraphrase
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import REPO, read_jsonl, read_qrels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a finished bench/protocol.py run")
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.85])
    args = ap.parse_args()

    import pandas as pd

    from embedloop.config import load_settings
    from embedloop.learn.pairs import mine_corpus_negatives, similarity_above_chance
    from embedloop.production.champion import Production

    settings = load_settings(args.config, home=str(args.out / "home"))
    retriever = Production.from_settings(settings).retriever(
        "1", max_seq_length=settings.max_seq_length)
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    train = {q: docs for q, docs in read_qrels(args.beir / "qrels" / "train.tsv").items()
             if q in queries}
    qids = sorted(train)
    found = retriever.search([queries[q] for q in qids], settings.negative_search_k)
    hits = {q: [(h.doc_id, h.score) for h in hs] for q, hs in zip(qids, found, strict=True)}
    pairs = pd.DataFrame([(q, d) for q in qids for d in sorted(train[q])],
                         columns=["qkey", "doc_id"])
    ids = set(pairs["doc_id"]) | {d for hs in hits.values() for d, _ in hs}
    chance, similarity = similarity_above_chance(retriever.index, ids)  # as the pipeline does

    def twin(a: str, b: str) -> bool:
        return a.removesuffix("-twin") == b.removesuffix("-twin")

    print(f"{args.beir.name}: {len(pairs)} judged train pairs, {len(qids)} queries; two random "
          f"documents share a cosine of {chance:.3f} (chance)")
    print("| max similarity above chance | negatives mined | judged relevant | twin of a "
          "judged document | passed over |")
    print("|---|---|---|---|---|")
    for threshold in args.thresholds:
        mined, passed_over = mine_corpus_negatives(
            pairs, hits, {q: {d} for q, d in zip(pairs["qkey"], pairs["doc_id"], strict=True)},
            settings.negative_relative_margin, similarity if threshold < 1 else None, threshold)
        got = [(q, d, m) for q, d, m in zip(pairs["qkey"], pairs["doc_id"], mined, strict=True)
               if m is not None]
        relevant = sum(m in train[q] for q, _, m in got)
        twins = sum(any(twin(m, r) for r in train[q]) and m not in train[q] for q, _, m in got)
        print(f"| {'off' if threshold >= 1 else threshold} | {len(got)} | {relevant} "
              f"({relevant / max(len(got), 1):.1%}) | {twins} ({twins / max(len(got), 1):.1%}) "
              f"| {passed_over} |")


if __name__ == "__main__":
    main()
