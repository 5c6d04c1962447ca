"""Production's rule, tested once: the champion alias and the live index move together,
and the live index is the one the champion built. Real MLflow registry (SQLite in a
temp dir) and real FAISS store; versions are registered without weights (the alias and
index moves do not read them), which keeps each test under a few seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedloop.errors import IndexUnavailable, NothingToRollBack, RegistryError
from embedloop.index.faiss_index import FaissIndex, FaissIndexStore
from embedloop.production.champion import Opponent, Production
from embedloop.production.registry import CHAMPION, Registry

MODEL = "embedloop-test"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for the module (its migrations take seconds); one model per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def production(tracking_uri: str, tmp_path: Path) -> Production:
    registry = Registry(tracking_uri, MODEL, tmp_path / "artifacts")
    for found in registry.client.search_registered_models(f"name='{MODEL}'"):
        registry.client.delete_registered_model(found.name)
    registry.client.create_registered_model(MODEL)
    return Production(registry, FaissIndexStore(tmp_path / "indexes"), tmp_path / "models")


def new_version(production: Production, with_index: bool = True) -> str:
    """A registered version and, unless told otherwise, an index it built."""
    run_id = production.registry.start_run("test", {})
    version = str(production.registry.client.create_model_version(
        MODEL, source=f"runs:/{run_id}/model", run_id=run_id).version)
    if with_index:
        vectors = np.eye(3, dtype=np.float32)[[int(version) % 3, (int(version) + 1) % 3]]
        production.save_index(FaissIndex.build(vectors, ["a", "b"], "fp32"), version, "c")
    return version


def test_promotion_moves_champion_and_live_index_together(production: Production) -> None:
    v1, v2 = new_version(production), new_version(production)
    assert production.promote(v1) is None
    assert production.promote(v2) == v1
    state = production.state()
    assert (state.champion, state.previous, state.live_index) == (v2, v1, "v0002")
    assert state.aligned and state.live_manifest is not None
    assert state.live_manifest.model_version == v2


def test_a_version_without_an_index_is_not_promoted(production: Production) -> None:
    v1 = new_version(production)
    production.promote(v1)
    bare = new_version(production, with_index=False)
    with pytest.raises(IndexUnavailable, match="no index; promotion refused"):
        production.promote(bare)
    assert (production.state().champion, production.state().live_index) == (v1, "v0001")


def test_a_cut_off_promotion_is_answered_around_then_repaired(production: Production) -> None:
    v1, v2 = new_version(production), new_version(production)
    production.promote(v1)
    production.registry.promote(v2)  # the alias moved; the process died before the swap
    assert not production.state().aligned
    index = production.champion_index()  # search already uses the champion's own index
    assert index.manifest is not None and index.manifest.model_version == v2
    assert production.repair() == "v0002"
    assert production.state().aligned
    assert "not built by champion" in production.notes[0]
    assert production.repair() == "v0002" and len(production.notes) == 1  # nothing to do


def test_rollback_restores_the_previous_pair_and_walks_back(production: Production) -> None:
    v1, v2, v3 = (new_version(production) for _ in range(3))
    for version in (v1, v2, v3):
        production.promote(version)
    done = production.rollback()
    assert (done.rolled_back, done.champion, done.live_index, done.previous) == (
        v3, v2, "v0002", v1)
    assert production.rollback().champion == v1
    assert production.state().live_index == "v0001" and production.state().aligned
    with pytest.raises(NothingToRollBack, match="first champion"):
        production.rollback()


def test_rollback_to_a_version_without_an_index_changes_nothing(
        production: Production, tmp_path: Path) -> None:
    v1, v2 = new_version(production), new_version(production)
    production.promote(v1)
    production.promote(v2)
    (tmp_path / "indexes" / "versions" / "v0001").rename(tmp_path / "elsewhere")
    with pytest.raises(IndexUnavailable, match="rollback refused, nothing changed"):
        production.rollback()
    state = production.state()
    assert (state.champion, state.previous, state.live_index) == (v2, v1, "v0002")


def test_an_index_the_champion_did_not_build_is_never_searched(
        production: Production) -> None:
    with pytest.raises(IndexUnavailable, match="no champion yet"):
        production.champion_index()
    v1 = new_version(production)
    production.promote(v1)
    bare = new_version(production, with_index=False)
    production.registry.client.set_registered_model_alias(MODEL, CHAMPION, bare)
    with pytest.raises(IndexUnavailable, match=f"built by {MODEL} v{v1}, not {MODEL} v{bare}"):
        production.champion_index()
    assert production.repair() is None  # nothing to realign to: the caller rebuilds


def test_a_canary_is_judged_against_one_champion_and_ends_when_it_moves(
        production: Production) -> None:
    v1, v2, v3 = (new_version(production) for _ in range(3))
    production.promote(v1)
    with pytest.raises(IndexUnavailable, match="no index; the canary was not started"):
        production.start_canary(new_version(production, with_index=False))
    assert production.state().canaries == ()  # refused: nothing moved
    production.start_canary(v2)
    assert production.state().canaries == (v2,)
    assert production.opponents(v1) == [Opponent("canary", v2, "v0002")]
    assert production.opponents(v3) == []  # only against the champion it started with
    production.promote(v3)  # another candidate won: the canary's comparison is void
    assert production.state().canaries == () and production.registry.canaries() == []
    assert "moved from v1" in production.registry.version_info(v2).tags["canary_outcome"]

    production.start_canary(v2)  # against v3 now; the canary itself wins
    production.promote(v2)
    assert production.registry.version_info(v2).tags["canary_outcome"] == "promoted"
    assert production.state().canaries == ()


def test_canaries_race_in_their_slots(production: Production) -> None:
    v1, v2, v3, v4 = (new_version(production) for _ in range(4))
    production.promote(v1)
    production.start_canary(v2, slots=2)
    production.start_canary(v3, slots=2)
    assert production.state().canaries == (v2, v3)
    with pytest.raises(RegistryError, match="all 2 canary slots are taken"):
        production.start_canary(v4, slots=2)
    assert production.end_canary(v2, "replaced by v4")
    assert not production.end_canary(v2, "again")  # not running any more
    production.start_canary(v4, slots=2)  # takes the free slot
    assert production.state().canaries == (v4, v3)
    assert [o.version for o in production.opponents(v1)] == [v4, v3]


def test_a_promotion_puts_the_new_champion_on_watch_and_a_rollback_ends_it(
        production: Production) -> None:
    """After a promotion the service interleaves the new champion with the one it
    replaced; the watch ends when a run judges it, or with the next move."""
    v1, v2, v3 = (new_version(production) for _ in range(3))
    production.promote(v1)  # the first champion: nothing to watch it against
    assert production.state().watched_against is None and production.opponents(v1) == []
    production.promote(v2)
    assert production.state().watched_against == v1
    assert production.opponents(v2) == [Opponent("watch", v1, "v0001")]
    production.end_watch(v2, "held: users prefer it")
    assert production.state().watched_against is None
    production.promote(v3)
    assert production.state().watched_against == v2
    production.rollback()  # back to v2: v3's watch ends, and v2 is not watched again
    assert production.state().watched_against is None
    assert "rolled back" in production.registry.version_info(v3).tags["watch_outcome"]


def test_a_canary_left_from_an_earlier_champion_is_never_served(production: Production) -> None:
    v1, v2, v3 = (new_version(production) for _ in range(3))
    production.promote(v1)
    production.start_canary(v2)
    production.registry.promote(v3)  # the alias moved; the process died before the rest
    assert production.state().canaries == ()  # v2 was judged against v1, not v3
    assert production.opponents(v3) == []


def test_a_canary_that_cannot_be_cleared_does_not_fail_a_promotion_that_happened(
        production: Production, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2, v3 = (new_version(production) for _ in range(3))
    production.promote(v1)
    production.start_canary(v2)

    def registry_down(version: str, outcome: str) -> bool:
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(production.registry, "end_canary", registry_down)
    assert production.promote(v3) == v1  # the move is complete, and says so
    state = production.state()
    assert (state.champion, state.live_index, state.canaries) == (v3, "v0003", ())
    assert "could not be updated" in production.notes[-1]
    assert [o.kind for o in production.opponents(v3)] == ["watch"]  # the stale canary: never


def test_a_hybrid_rankers_fusion_weight_moves_with_its_model(production: Production) -> None:
    """The ranker version: a model, the index its document encoder built (both sides) and
    the fusion weight it was judged with. A query-side version shares its parent's index
    but not its weight: promotion, the watch and rollback each serve a version with its
    own."""
    from embedloop.production.registry import DOCUMENT_ENCODER, FUSION_WEIGHT
    from embedloop.search.fusion import Fusion
    from embedloop.search.hybrid import LexicalSpec
    from embedloop.search.sparse import Analyzer

    v1 = new_version(production, with_index=False)
    index = FaissIndex.build(np.eye(3, dtype=np.float32)[:2], ["a", "b"], "fp32")
    index.lexical = LexicalSpec(Analyzer(), Fusion(weight=0.5)).build(
        ["bone fractures and vitamin D", "breast cancer risk"], ["a", "b"])
    built = production.save_index(index, v1, "c").version
    run_id = production.registry.start_run("test", {})
    v2 = str(production.registry.client.create_model_version(
        MODEL, source=f"runs:/{run_id}/model", run_id=run_id,
        tags={DOCUMENT_ENCODER: v1, FUSION_WEIGHT: "0.8"}).version)

    def weight(index: object) -> float:
        return index.lexical.fusion.weight  # type: ignore[attr-defined]

    production.promote(v1)
    assert weight(production.champion_index()) == 0.5  # untagged: the version's own
    production.promote(v2)
    assert production.state().live_index == built  # the same index version...
    assert weight(production.champion_index()) == 0.8  # ...searched with v2's weight
    (watch,) = production.opponents(v2)
    assert weight(production.load_index(watch.index_version, watch.version)) == 0.5
    # a canary with a weight of its own is served with it, beside the champion's
    run_id = production.registry.start_run("test", {})
    v3 = str(production.registry.client.create_model_version(
        MODEL, source=f"runs:/{run_id}/model", run_id=run_id,
        tags={DOCUMENT_ENCODER: v1, FUSION_WEIGHT: "0.3"}).version)
    production.start_canary(v3)
    canary = next(o for o in production.opponents(v2) if o.kind == "canary")
    assert canary.index_version == built
    assert weight(production.load_index(canary.index_version, canary.version)) == 0.3
    assert weight(production.champion_index()) == 0.8
    production.rollback()
    assert weight(production.champion_index()) == 0.5
    assert weight(production.store.load(built)) == 0.5  # the stored version is unchanged
