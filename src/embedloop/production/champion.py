"""Production: the `champion` alias in the model registry and the live index, as one thing.

The rule everything else relies on: **the live index was built by the champion's
document encoder**, and the two move together. A version's document encoder is its own,
unless it was trained query-side: then it shares (and is tagged with) the document route
of the version it was trained from, so it searches that version's index as it is.
Promotion and rollback move the alias first (the commit point) and the live pointer
second; a crash between the two leaves an alias whose index is
not live yet, which `repair()` finishes at the next start and `champion_index()`
already answers around. Every reader of production (the flows, the CLI, search, alerts)
goes through this class, so the rule is written once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedloop.errors import IndexUnavailable
from embedloop.faults import crash_point, pause_point
from embedloop.index.base import IndexManifest, IndexStore, VectorIndex, open_index_store
from embedloop.index.build import CorpusIndexer, with_fusion, with_lexical
from embedloop.models.base_models import model_prompts
from embedloop.production.registry import CHAMPION, PREVIOUS, Registry, is_intact, seal

if TYPE_CHECKING:
    from embedloop.config import Settings
    from embedloop.search.retrieval import Retriever


@dataclass(frozen=True)
class Champion:
    version: str
    model_path: str  # a local folder holding it


@dataclass(frozen=True)
class ProductionState:
    model_name: str
    champion: str | None
    previous: str | None
    live_index: str | None
    live_manifest: IndexManifest | None
    canaries: tuple[str, ...] = ()  # candidates interleaved with the champion
    document_encoder: str | None = None  # the version whose document route the champion uses
    watched_against: str | None = None  # the champion's watch runs against this version

    @property
    def aligned(self) -> bool:
        """The live index was built by the champion's document encoder (or there is
        neither yet)."""
        if self.champion is None or self.live_manifest is None:
            return self.champion is None and self.live_manifest is None
        return self.live_manifest.model_version == (self.document_encoder or self.champion)


@dataclass(frozen=True)
class Opponent:
    """A ranker the service interleaves with the champion: a canary (a candidate), or,
    while the champion is on watch, the champion it replaced."""

    kind: str  # "canary" or "watch"
    version: str
    index_version: str


@dataclass(frozen=True)
class Rollback:
    rolled_back: str  # the champion that was replaced
    champion: str
    live_index: str
    previous: str | None  # what a further rollback would restore


class Production:
    def __init__(self, registry: Registry, store: IndexStore, models_dir: Path) -> None:
        self.registry = registry
        self.store = store
        self.models_dir = models_dir  # local, checksummed copies of registered versions
        self.model_name = registry.model_name
        self.notes: list[str] = []  # what was found damaged or cut off and repaired

    @classmethod
    def from_settings(cls, settings: Settings) -> Production:
        registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                            settings.artifact_root)
        return cls(registry, open_index_store(settings.index_place), settings.state_dir / "models")

    # -- reading ---------------------------------------------------------------
    def state(self) -> ProductionState:
        live = self.store.live_version()
        champion = self.registry.version_for_alias(CHAMPION)
        canaries = tuple(v for v, against in self.registry.canaries() if against == champion)
        return ProductionState(self.model_name, champion,
                               self.registry.version_for_alias(PREVIOUS), live,
                               self.store.manifest(live) if live else None, canaries,
                               self.document_encoder(champion) if champion else None,
                               self.registry.watched_against(champion) if champion else None)

    def document_encoder(self, version: str) -> str:
        """The version whose document route encoded the indexes `version` can search."""
        return self.registry.document_encoder(version)

    def index_for(self, version: str) -> str | None:
        """The newest index version `version` can search (built by its document encoder):
        the one promotion or rollback makes live with it."""
        return self.store.latest_for_model(self.model_name, self.document_encoder(version))

    def check_index(self, index: VectorIndex, version: str) -> None:
        """Refuse `index` unless model `version`'s document encoder built it."""
        index.require_model(self.model_name, self.document_encoder(version))

    def model_path(self, version: str) -> str:
        path = self.registry.local_model_path(version, self.models_dir)
        self.notes += self.registry.repairs
        self.registry.repairs.clear()
        return path

    def champion(self) -> Champion | None:
        version = self.registry.version_for_alias(CHAMPION)
        return Champion(version, self.model_path(version)) if version else None

    def champion_pair(self) -> tuple[str, str]:
        """(champion version, the index version search must use with it): the live index,
        or, when a promotion was cut off between the alias move and the swap (the next
        run finishes it), the newest index the champion built. Anything else is refused.
        Reads only the registry and the manifests: cheap enough to poll."""
        champion = self.registry.version_for_alias(CHAMPION)
        if champion is None:
            raise IndexUnavailable("no champion yet: run `embedloop retrain --reason ...` first")
        live = self.store.live_version()
        if live is None:
            raise IndexUnavailable("there is no live index yet: run `embedloop retrain` first")
        m = self.store.manifest(live)
        encoder = self.document_encoder(champion)
        if (m.model_name, m.model_version) == (self.model_name, encoder):
            return champion, live
        built = self.store.latest_for_model(self.model_name, encoder)
        if built is None:
            raise IndexUnavailable(
                f"index {live} was built by {m.model_name} v{m.model_version}, not "
                f"{self.model_name} v{encoder}; searching it with that model is refused "
                f"(run `embedloop status`, then `embedloop rollback` or a retrain to realign)")
        return champion, built

    def opponents(self, champion: str) -> list[Opponent]:
        """What the service interleaves with `champion`, each with the index it searches:
        the previous champion while `champion` is on watch, and the canaries judged
        against it (one left from an earlier champion is void: it is left out)."""
        out = []
        against = self.registry.watched_against(champion)
        if against is not None:
            index = self.index_for(against)
            if index is not None:
                out.append(Opponent("watch", against, index))
        for version, judged_against in self.registry.canaries():
            index = self.index_for(version) if judged_against == champion else None
            if index is not None:
                out.append(Opponent("canary", version, index))
        return out

    def champion_index(self) -> VectorIndex:
        """The index the champion built (see champion_pair), loaded."""
        champion, version = self.champion_pair()
        return self.load_index(version, champion)

    def load_index(self, index_version: str, model_version: str) -> VectorIndex:
        """Index `index_version`, as model `model_version` searches it: refused unless that
        model's document encoder built it; a hybrid one fused with the weight the model
        was judged with (its FUSION_WEIGHT tag), so a ranker version's model, sides and
        fusion move together through promotion, canary and rollback."""
        index = self.store.load(index_version)
        self.check_index(index, model_version)  # the files under the manifest too
        weight = self.registry.fusion_weight(model_version) if index.lexical else None
        return index if weight is None else with_fusion(index, weight)

    def retriever(self, version: str | None = None, *, device: str | None = None,
                  max_seq_length: int | None = None, batch_size: int = 64) -> Retriever:
        """`version` (default: the champion) searching the index it built."""
        from embedloop.models.encoding import load_model
        from embedloop.search.retrieval import Retriever

        if version is None:
            version = self.champion_pair()[0]
            index = self.champion_index()
        else:
            built = self.index_for(version)
            if built is None:
                raise IndexUnavailable(f"v{version} has no index")
            index = self.load_index(built, version)
        model = load_model(self.model_path(version), device, max_seq_length)
        return Retriever(model, index, batch_size)

    # -- changing --------------------------------------------------------------
    def register(self, run_id: str, model: Any, model_dir: Path, *, description: str,
                 tags: dict[str, str]) -> str:
        """A new registered version (not promoted), with a local copy kept so later runs
        need not download it."""
        # The prompts go on record with the version: an index is held to them (index/base.py).
        tags = {**tags, "prompts": json.dumps(model_prompts(model), ensure_ascii=False)}
        version = self.registry.log_model(run_id, model, description=description, tags=tags)
        crash_point("register")  # a registered version that is no one's champion
        target = self.models_dir / f"v{version}"
        if not is_intact(target):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(model_dir, target / "model")
            seal(target)
        return version

    def save_index(self, index: VectorIndex, version: str,
                   corpus_fingerprint: str) -> IndexManifest:
        """`index` (the corpus encoded by model `version`) stored as a new index version,
        not live, recorded as built by `version`'s document encoder."""
        return self.store.save_version(index, model_name=self.model_name,
                                       model_version=self.document_encoder(version),
                                       corpus_fingerprint=corpus_fingerprint)

    def ensure_saved(self, index: VectorIndex, version: str,
                     corpus_fingerprint: str) -> IndexManifest:
        """`index`, which model `version` searches, as a stored version: saved now if it
        was built in memory (a full candidate's, or a re-encode after the corpus changed);
        as it is if it already is one (the champion's, which a query-side candidate
        shares)."""
        if index.manifest is None:
            return self.save_index(index, version, corpus_fingerprint)
        self.check_index(index, version)
        return index.manifest

    def start_canary(self, version: str, slots: int = 1, after: str | None = None) -> None:
        """`version` (registered, with its index saved) is interleaved with the champion
        for a share of sessions, until a run judges it or the champion moves; its evidence
        is the sessions logged after `after` (a log timestamp: what the run that started it
        had read; None: all). Refused, with nothing moved, if it has no index or every one
        of `slots` is taken."""
        champion = self.registry.version_for_alias(CHAMPION)
        if champion is None or champion == version:
            raise IndexUnavailable(f"v{version} cannot be a canary against champion "
                                   f"{champion and 'v' + champion}")
        if self.index_for(version) is None:
            raise IndexUnavailable(f"v{version} has no index; the canary was not started")
        self.registry.set_canary(version, against=champion, slots=slots, after=after)

    def end_canary(self, version: str, outcome: str) -> bool:
        """Stop interleaving `version`; `outcome` is tagged on it (why it ended)."""
        return self.registry.end_canary(version, outcome)

    def end_watch(self, version: str, outcome: str) -> None:
        """Champion `version`'s watch is over (it held, or it was rolled back)."""
        self.registry.end_watch(version, outcome)

    def promote(self, version: str, after: str | None = None) -> str | None:
        """The commit point: `version` becomes champion, then its newest index goes live.
        Refused, with nothing moved, if it has no index. Returns the old champion. The
        canaries end with it (they were judged against the old champion), and the new
        champion goes on watch against the old one, on sessions logged after `after` (the
        latest log timestamp the promoting run read: sessions before it were served by
        the old champion)."""
        index_version = self.index_for(version)
        if index_version is None:
            raise IndexUnavailable(f"v{version} has no index; promotion refused, nothing "
                                   f"changed")
        old = self.registry.promote(version)
        crash_point("promote")  # champion moved, live index not yet: see repair()
        pause_point("promote")
        self.store.set_live(index_version)
        if old is not None and old != version:
            self._after_move(old, version, f"the champion moved from v{old} to v{version}",
                             watch=True, after=after)
        return old

    def _after_move(self, old: str, new: str, why: str, watch: bool,
                    after: str | None = None) -> None:
        """Bookkeeping after the commit point, so it must not fail the move that already
        happened, and each step is tried on its own: canaries judged against the old
        champion are void (never served or judged again, see opponents()), so failing to
        end one only leaves a note; a watch that cannot start leaves a note too."""
        def attempt(what: str, step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as exc:
                self.notes.append(f"after the move from v{old} to v{new}, {what} could not "
                                  f"be updated ({type(exc).__name__}: {exc})")

        def end_canaries() -> None:
            for version, against in self.registry.canaries():
                if against == old:
                    self.end_canary(version, "promoted" if version == new else why)

        attempt(f"the canaries (void now: judged against v{old})", end_canaries)
        attempt(f"v{old}'s watch", lambda: self.registry.watched_against(old) is not None
                and self.registry.end_watch(old, why))
        if watch:
            attempt(f"v{new}'s watch", lambda: self.registry.start_watch(new, against=old,
                                                                         after=after))

    def rollback(self) -> Rollback:
        """`previous` becomes champion and its newest index goes live. The index is looked
        up before anything moves, so a refused rollback changes nothing."""
        target = self.registry.version_for_alias(PREVIOUS)
        index_version = self.index_for(target) if target else None
        if target and index_version is None:
            raise IndexUnavailable(f"v{target} has no index on disk; rollback refused, "
                                   f"nothing changed")
        old, new = self.registry.rollback()  # refused, saying why, if there is no previous
        assert index_version is not None
        self.store.set_live(index_version)
        self._after_move(old, new, f"rolled back from v{old} to v{new}", watch=False)
        return Rollback(old, new, index_version, self.registry.version_for_alias(PREVIOUS))

    def repair(self) -> str | None:
        """Finish a promotion or rollback cut off between its two steps: make the live
        index the newest one the champion built. Returns the live version, or None when
        the champion has no index at all (it must be rebuilt)."""
        champion = self.registry.version_for_alias(CHAMPION)
        live = self.store.live_version()
        if champion is None:
            return live
        encoder = self.document_encoder(champion)
        if live and self.store.manifest(live).model_version == encoder:
            return live
        wanted = self.store.latest_for_model(self.model_name, encoder)
        if wanted is not None:
            self.store.set_live(wanted)
            self.notes.append(f"the live index was {live}, not built by champion "
                              f"v{champion}'s document encoder: set it to {wanted}")
        return wanted

    def incumbent_index(self, model: Any, model_path: str, index_corpus: CorpusIndexer,
                        corpus_fingerprint: str) -> tuple[VectorIndex, str | None]:
        """The index the champion (`model`) is judged on: the live one, searching as a
        candidate's would (IndexStore.as_built), which already holds its vectors;
        re-encoded only if the corpus changed since it was built (a note says so). Its
        lexical side is the deployment's: one built otherwise is rebuilt over the same
        vectors (with_lexical), unsaved, and a note says so."""
        built = self.store.as_built(self.champion_index())
        version = built.manifest.version if built.manifest else "?"
        if built.manifest is not None and built.manifest.corpus_fingerprint == corpus_fingerprint:
            judged = with_lexical(built, index_corpus.corpus, index_corpus.lexical,
                                  keep_weight=index_corpus.learns_weight)
            return judged, (None if judged is built else (
                f"index {version}'s lexical side is not the one the settings ask for "
                f"({'none' if index_corpus.lexical is None else 'BM25, fused'}): rebuilt it "
                f"over the same vectors for this run"))
        return index_corpus(model, model_path), (
            f"the corpus changed since index {version} was built; the incumbent was "
            f"re-encoded for a fair comparison")

    def ensure_champion(self, base_model: str, load: Callable[[str], Any],
                        index_corpus: CorpusIndexer, corpus_fingerprint: str) -> Champion:
        """First run: the base model becomes champion v1, live with its own index.
        Later runs: repair() and, if the champion has no index at all, rebuild it.

        `load(path)` loads a model; `index_corpus(model, path)` encodes the corpus with
        it and builds the index (index/build.py)."""
        champion = self.registry.version_for_alias(CHAMPION)
        if champion is None:
            run_id = self.registry.start_run("bootstrap", {
                "trigger": "bootstrap", "reason": "first run: the base model becomes champion"})
            model = load(base_model)
            version = self.register(run_id, model, Path(base_model), description=(
                f"Base model {base_model}, registered as the first champion."),
                tags={"decision": "bootstrap"})
            self.save_index(index_corpus(model, base_model), version, corpus_fingerprint)
            self.promote(version)
            self.registry.client.set_terminated(run_id, "FINISHED")
            self.notes.append(f"no champion yet: the base model {base_model} is champion "
                              f"v{version}")
        elif self.repair() is None:
            path = self.model_path(champion)
            rebuilt = self.save_index(index_corpus(load(path), path), champion,
                                      corpus_fingerprint)
            self.store.set_live(rebuilt.version)
            self.notes.append(f"champion v{champion} had no index: rebuilt it")
        found = self.champion()
        assert found is not None
        return found
