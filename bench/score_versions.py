"""Score registered model versions of a finished bench run on the BEIR test qrels,
promoted or not: did a candidate the gate kept out actually generalise?

    .venv/bin/python bench/score_versions.py --out bench/out/scifact 3 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import (  # noqa: E402
    REPO,
    TEST_METRICS,
    index_texts,
    read_jsonl,
    read_qrels,
    score_index,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", nargs="+")
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/scifact")
    ap.add_argument("--beir", type=Path, default=REPO.parent / "shared/benchmarks/scifact")
    ap.add_argument("--config", type=Path, default=REPO / "bench/protocol.toml")
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.corpus import document_texts, load_corpus
    from embedloop.encoding import load_model, pick_device, resolve_precision
    from embedloop.registry import Registry

    settings = load_settings(args.config, home=str(args.out / "home"))
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    corpus = load_corpus(args.beir / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    device = pick_device()
    precision = resolve_precision(settings.encode_precision, device)
    for version in args.versions:
        model = load_model(registry.local_model_path(version, settings.state_dir / "models"),
                           device, settings.max_seq_length)
        retriever = index_texts(model, dict(zip(corpus["doc_id"], document_texts(corpus),
                                                strict=True)),
                                precision, settings.encode_batch_size)
        scores = score_index(retriever, queries, test)
        tags = registry.version_info(version).tags
        print(f"v{version} ({tags.get('decision', '?')}): "
              + ", ".join(f"{m} {scores[m]:.4f}" for m in TEST_METRICS), flush=True)


if __name__ == "__main__":
    main()
