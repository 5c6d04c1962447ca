"""Production's side of a run: the champion (bootstrapped or repaired), the candidate
registered, and, on promotion only, its index saved and made live with it."""

from __future__ import annotations

import functools

import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import corpus_fingerprint
from embedloop.encoding import Runtime, load_model
from embedloop.evidence import OfflineComparison, Source
from embedloop.faults import crash_point, pause_point
from embedloop.index import VectorIndex
from embedloop.judge import Action, Judgement
from embedloop.production import Champion, Production
from embedloop.registry import DOCUMENT_ENCODER
from embedloop.training import FineTuneResult
from tasks._stage import stage
from tasks.evaluate import index_corpus


@stage(name="champion")
def ensure_champion_stage(settings: Settings, production: Production, corpus: pd.DataFrame,
                          runtime: Runtime) -> Champion:
    """The first run registers the base model as champion v1 and builds its live index;
    later runs repair a live pointer left behind by a crash between alias and swap."""
    champion = production.ensure_champion(
        settings.resolved_base_model,
        load=functools.partial(load_model, device=runtime.device,
                               max_seq_length=settings.max_seq_length),
        index_corpus=functools.partial(index_corpus, settings, production.store, corpus,
                                       runtime.encoder),
        corpus_fingerprint=corpus_fingerprint(corpus))
    for note in production.notes:
        get_run_logger().warning(note)
    return champion


# What the registry's `decision` tag says for each offline judgement.
DECISIONS = {Action.PROMOTE: "promoted", Action.CANARY: "to the canary",
             Action.KEEP: "not promoted", Action.REJECT: "rejected"}


@stage(name="register")
def register_stage(production: Production, run_id: str, tuned: FineTuneResult,
                   champion: Champion, judgement: Judgement, batch_id: str, pairs: int,
                   metric: str) -> str:
    """Every judged candidate is registered, whatever the judge said, with what it said
    and why. A query-side candidate is tagged with the document encoder it shares (the
    champion's), which is how production finds the index it searches."""
    pause_point("register")
    verdict = DECISIONS[judgement.action]
    tags = {"decision": verdict, "parent_version": champion.version, "batch": batch_id,
            "train_side": tuned.side}
    pool = judgement.verdict(Source.POOL)
    if pool is not None and isinstance(pool.numbers, OfflineComparison):
        tags[metric.replace("@", "_at_")] = f"{pool.numbers.candidate:.4f}"
    if tuned.side == "query":
        tags[DOCUMENT_ENCODER] = production.document_encoder(champion.version)
    return production.register(
        run_id, tuned.model, tuned.path,
        description=(f"Fine-tuned ({tuned.side} side) from v{champion.version} on batch "
                     f"{batch_id} ({pairs} pairs). Decision: {verdict} - {judgement.reason}"),
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
