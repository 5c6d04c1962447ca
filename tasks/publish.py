"""Production's side of a run: the champion (bootstrapped or repaired), the candidate
registered, and, on promotion only, its index saved and made live with it
(embedloop.production)."""

from __future__ import annotations

import functools

import pandas as pd
from prefect import get_run_logger

from embedloop.faults import crash_point, pause_point
from embedloop.index.base import VectorIndex
from embedloop.index.build import CorpusIndexer
from embedloop.ingest.corpus import corpus_fingerprint
from embedloop.judge.offline import candidate_record
from embedloop.judge.policy import Judgement
from embedloop.learn.training import FineTuneResult
from embedloop.models.encoding import load_model
from embedloop.production.champion import Champion, Production
from embedloop.production.registry import DOCUMENT_ENCODER, FUSION_WEIGHT
from embedloop.tasks._stage import stage


@stage(name="champion")
def ensure_champion_stage(production: Production, base_model: str,
                          index_corpus: CorpusIndexer, device: str,
                          max_seq_length: int | None) -> Champion:
    """The first run registers the base model as champion v1 and builds its live index;
    later runs repair a live pointer left behind by a crash between alias and swap."""
    champion = production.ensure_champion(
        base_model, load=functools.partial(load_model, device=device,
                                           max_seq_length=max_seq_length),
        index_corpus=index_corpus, corpus_fingerprint=corpus_fingerprint(index_corpus.corpus))
    for note in production.notes:
        get_run_logger().warning(note)
    return champion


@stage(name="register")
def register_stage(production: Production, run_id: str, tuned: FineTuneResult,
                   champion: Champion, judgement: Judgement, batch_id: str, pairs: int,
                   metric: str, fusion_weight: float | None = None) -> str:
    """Every judged candidate is registered, whatever the judge said, with what it said
    and why. A query-side candidate is tagged with the document encoder it shares (the
    champion's), which is how production finds the index it searches; a hybrid one with
    the fusion weight it was judged with, which it is served with."""
    pause_point("register")
    description, tags = candidate_record(judgement, tuned.side, champion.version, batch_id,
                                         pairs, metric)
    if tuned.side == "query":
        tags[DOCUMENT_ENCODER] = production.document_encoder(champion.version)
    if fusion_weight is not None:
        tags[FUSION_WEIGHT] = f"{fusion_weight:g}"
    return production.register(run_id, tuned.model, tuned.path, description=description,
                               tags=tags)


@stage(name="publish")
def publish_stage(production: Production, index: VectorIndex, version: str,
                  corpus: pd.DataFrame, after: str = "") -> str:
    """The commit point: the candidate's index saved as a new version (not live) unless
    it is one already (a query-side candidate searches the champion's), then `champion`
    moved and the live index swapped (Production.promote). Returns the live index."""
    manifest = production.ensure_saved(index, version, corpus_fingerprint(corpus))
    crash_point("publish")  # a new index version on disk, not live
    pause_point("publish")
    old = production.promote(version, after or None)  # on watch from then on
    get_run_logger().info("champion v%s -> v%s; live index %s (%s %s, %d docs)", old, version,
                          manifest.version, manifest.kind, manifest.params, manifest.n_docs)
    return manifest.version
