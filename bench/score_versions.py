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
    ap.add_argument("--vs", nargs=2, metavar=("OUT", "VERSION"),
                    help="also score VERSION of another bench run's home (OUT) and print the "
                         "paired difference on the test queries, with its 95%% CI")
    args = ap.parse_args()

    from embedloop.config import load_settings
    from embedloop.errors import IndexUnavailable
    from embedloop.ingest.corpus import document_texts, load_corpus
    from embedloop.models.encoding import load_model, pick_device, resolve_precision
    from embedloop.production.champion import Production
    from embedloop.production.registry import Registry

    settings = load_settings(args.config, home=str(args.out / "home"))
    registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                        settings.artifact_root)
    corpus = load_corpus(args.beir / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.beir / "queries.jsonl")}
    test = read_qrels(args.beir / "qrels" / "test.tsv")
    device = pick_device()
    precision = resolve_precision(settings.encode_precision, device)
    production = Production.from_settings(settings)
    for version in args.versions:
        try:  # the index it searches: its own, or (query side) its document encoder's
            retriever = production.retriever(version, device=device,
                                             max_seq_length=settings.max_seq_length)
        except IndexUnavailable:  # a kept full candidate: its index was never saved
            model = load_model(production.model_path(version), device,
                               settings.max_seq_length)
            retriever = index_texts(model, dict(zip(corpus["doc_id"],
                                                    document_texts(corpus), strict=True)),
                                    precision, settings.encode_batch_size)
        scores = score_index(retriever, queries, test)
        tags = registry.version_info(version).tags
        print(f"v{version} ({tags.get('decision', '?')}): "
              + ", ".join(f"{m} {scores[m]:.4f}" for m in TEST_METRICS), flush=True)
        if args.vs:
            paired(retriever, Path(args.vs[0]), args.vs[1], args.config, queries, test)


def paired(ours: object, home_out: Path, version: str, config: Path,
           queries: dict[str, str], test: dict[str, dict[str, int]]) -> None:
    """NDCG@10 of `ours` minus that of `version` in the bench run at `home_out`, query by
    query on the test split: mean, 95% bootstrap CI, wins and losses."""
    import numpy as np

    from embedloop.config import load_settings
    from embedloop.judge.significance import bootstrap_ci
    from embedloop.production.champion import Production
    from embedloop.search.retrieval import evaluate_retrieval

    settings = load_settings(config, home=str(home_out / "home"))
    theirs = Production.from_settings(settings).retriever(
        version, max_seq_length=settings.max_seq_length)
    a = evaluate_retrieval(ours, test, texts=queries).per_query.set_index("query")
    b = evaluate_retrieval(theirs, test, texts=queries).per_query.set_index("query")
    delta = (a["ndcg@10"] - b["ndcg@10"]).to_numpy()
    low, high = bootstrap_ci(delta)
    print(f"  minus v{version} of {home_out}: {np.mean(delta):+.4f} NDCG@10 on {len(delta)} "
          f"test queries, 95% CI [{low:+.4f}, {high:+.4f}], {int(np.sum(delta > 0))} better, "
          f"{int(np.sum(delta < 0))} worse", flush=True)


if __name__ == "__main__":
    main()
