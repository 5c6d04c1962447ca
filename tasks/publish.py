from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger

from embedloop.config import Settings
from embedloop.corpus import corpus_fingerprint
from embedloop.faults import crash_point, pause_point
from embedloop.index import IndexManifest, IndexStore
from embedloop.ledger import Ledger, commit_ledger, save_batch
from embedloop.logs import Cursor
from embedloop.registry import CHAMPION, Registry, is_intact, seal
from tasks._stage import io_stage, stage


@dataclass(frozen=True)
class Champion:
    version: str
    model_path: str


def cache_local_model(settings: Settings, version: str, model_dir: Path) -> None:
    """Keep the registered model's files locally so later runs need not download them."""
    target = settings.state_dir / "models" / f"v{version}"
    if is_intact(target):
        return
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target / "model")
    seal(target)


@io_stage(name="publish index")
def write_index_stage(settings: Settings, vectors: np.ndarray, corpus: pd.DataFrame,
                      version: str, precision: str) -> IndexManifest:
    """A new index version on disk, not live yet."""
    manifest = IndexStore(settings.index_dir).write_version(
        vectors, list(corpus["doc_id"]), model_name=settings.model_name, model_version=version,
        corpus_fingerprint=corpus_fingerprint(corpus), precision=precision,
        spec=settings.index_spec(len(corpus)), titles=list(corpus["title"]))
    get_run_logger().info("wrote index %s (%s %s, %d docs, model v%s)", manifest.version,
                          manifest.kind, manifest.params, manifest.n_docs, version)
    return manifest


@stage(name="promote")
def promote_stage(settings: Settings, registry: Registry, version: str,
                  index_version: str) -> str | None:
    """Commit point: move `champion`, then swap the live index to the one it built.
    A crash between the two is repaired by `align_live_index` at the next start."""
    old = registry.promote(version)
    crash_point("promote")  # champion moved, live index not yet: see align_live_index
    pause_point("promote")
    IndexStore(settings.index_dir).set_live(index_version)
    if old is None:
        get_run_logger().info("champion v%s (the first); live index %s", version, index_version)
    else:
        get_run_logger().info("champion v%s -> v%s; live index %s", old, version, index_version)
    return old


def align_live_index(settings: Settings, registry: Registry) -> str | None:
    """Make the live index the newest one built by the champion, if it is not already.
    Returns the live version, or None if the champion has no index (needs a rebuild)."""
    store = IndexStore(settings.index_dir)
    champion = registry.version_for_alias(CHAMPION)
    if champion is None:
        return store.live_version()
    live = store.live_version()
    if live is not None and store.manifest(live).model_version == champion:
        return live
    wanted = store.latest_for_model(settings.model_name, champion)
    if wanted is not None:
        store.set_live(wanted)
    return wanted


@io_stage(name="commit batch")
def commit_batch_stage(settings: Settings, ledger: Ledger, cursors: dict[str, Cursor],
                       batch_id: str, accepted: pd.DataFrame,
                       quarantined: pd.DataFrame) -> Ledger:
    """Store the batch's rows, then move the ledger past them in one atomic write."""
    save_batch(settings.state_dir, batch_id, accepted, quarantined)
    crash_point("commit")  # the batch's files written, the ledger not yet moved
    return commit_ledger(settings.state_dir, ledger, cursors, batch_id)


@io_stage(name="remember skipped files")
def commit_cursors_stage(settings: Settings, ledger: Ledger,
                         cursors: dict[str, Cursor]) -> Ledger:
    """A run with no new rows still remembers the empty and unreadable files it saw."""
    return commit_ledger(settings.state_dir, ledger, cursors, None)
