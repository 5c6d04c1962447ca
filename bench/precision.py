"""What `encode_precision = "auto"` picks on this CPU, and whether that is right: encoding
throughput in fp32 and in bf16, measured in one process, interleaved, best of N.

    .venv/bin/python bench/precision.py --docs 500
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from embedloop.config import default_base_model
    from embedloop.ingest.corpus import document_texts, load_corpus
    from embedloop.models.encoding import choose_precision, encode, load_model

    chosen, why = choose_precision("auto", "cpu")
    print(f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; torch's mkldnn bf16 check says "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"auto picks {chosen}: {why}")
    texts = document_texts(load_corpus(args.beir / "corpus.jsonl"))[: args.docs]
    model = load_model(default_base_model(), "cpu", 256)
    encode(model, texts[:64], role="document", precision="bf16")  # warm both paths
    encode(model, texts[:64], role="document", precision="fp32")
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(args.repeats):
        for precision in best:
            started = time.perf_counter()
            encode(model, texts, role="document", precision=precision)
            best[precision] = min(best[precision], time.perf_counter() - started)
    rates = {p: len(texts) / s for p, s in best.items()}
    print(f"encode {len(texts)} SciFact docs (256 tokens, batch 64), best of {args.repeats}: "
          + ", ".join(f"{p} {r:.1f} docs/s" for p, r in rates.items())
          + f"; bf16/fp32 = {rates['bf16'] / rates['fp32']:.2f}")
    faster = max(rates, key=lambda p: rates[p])
    print(f"auto's choice is {'right' if chosen == faster else 'WRONG'} here "
          f"({faster} is faster)")


if __name__ == "__main__":
    main()
