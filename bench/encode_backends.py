"""Encoding backends side by side, in one run: documents per second and SciFact test
NDCG@10 for torch (fp32 and bf16), ONNX Runtime (fp32 and int8 weights) and OpenVINO,
each encoding the whole corpus and the test queries with the same model.

    .venv/bin/python bench/encode_backends.py --beir ../shared/benchmarks/scifact
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import read_jsonl, read_qrels, score_index  # noqa: E402

CONFIGS = (("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx-int8", "fp32"),
           ("openvino", "auto"))


def main() -> None:
    from embedloop.config import default_base_model
    from embedloop.index.faiss_index import FaissIndex
    from embedloop.models.encoding import encode, load_model
    from embedloop.models.exported import load_exported
    from embedloop.search.retrieval import Retriever

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/benchmarks/scifact")
    ap.add_argument("--model", default=default_base_model())
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/out/encode_backends.json"))
    args = ap.parse_args()

    corpus = read_jsonl(args.beir / "corpus.jsonl")
    texts = [f"{d.get('title', '')} {d.get('text', '')}".strip() for d in corpus]
    ids = [d["_id"] for d in corpus]
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    torch_model = load_model(args.model, "cpu", args.max_seq_length)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for backend, precision in CONFIGS:
            started = time.perf_counter()
            model = torch_model if backend == "torch" else load_exported(
                torch_model, backend, Path(cache))
            prepare_s = time.perf_counter() - started
            encode(model, texts[:64], role="document", precision=precision)  # warm-up
            started = time.perf_counter()
            vectors = encode(model, texts, role="document", precision=precision)
            seconds = time.perf_counter() - started
            index = FaissIndex.build(vectors, ids, precision)
            scores = score_index(Retriever(model, index), queries, test)
            rows.append({"backend": backend, "precision": precision, "docs": len(texts),
                         "export_s": prepare_s, "encode_s": seconds,
                         "docs_per_s": len(texts) / seconds, **scores})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    base = next(r for r in rows if (r["backend"], r["precision"]) == ("torch", "fp32"))
    print("\n| backend | precision | docs/s | vs torch fp32 | NDCG@10 | vs torch fp32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['precision']} | {r['docs_per_s']:.1f} | "
              f"{r['docs_per_s'] / base['docs_per_s']:.2f}x | {r['ndcg@10']:.4f} | "
              f"{100 * (r['ndcg@10'] - base['ndcg@10']):+.2f} pts |")


if __name__ == "__main__":
    main()
