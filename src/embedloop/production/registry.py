"""MLflow model registry access: versions, the `champion`/`previous` aliases, local copies.

Alias moves are the commit points of promotion and rollback. Each promoted version
carries a `promoted_from` tag naming the champion it replaced, so `previous` can be
walked back one step at a time: rollback after rollback is well defined and stops
at the first champion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedloop.errors import NothingToRollBack, RegistryError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

CHAMPION = "champion"
PREVIOUS = "previous"
# Canaries: candidates interleaved with the champion for a share of sessions, one alias
# per slot: `canary`, then `canary-2`, `canary-3`, ... (canary_slots at once).
CANARY = "canary"
DOCUMENT_ENCODER = "document_encoder"  # version tag: whose document route this one shares
# Version tag of a hybrid ranker: the dense side's share in its fusion, chosen with the
# model (learn/fusion.py) and moving with it; absent: the index version's own fusion.
FUSION_WEIGHT = "fusion_weight"
# Written into the logged model's requirements instead of letting MLflow infer them
# (inference imports the model in a subprocess: ~9 s a run).
MODEL_REQUIREMENTS = ["sentence-transformers", "torch", "transformers"]


def _slot(alias: str) -> int:
    """The canary slot an alias names (canary: 1, canary-2: 2, ...); 0 if none."""
    if alias == CANARY:
        return 1
    prefix, _, number = alias.partition("-")
    return int(number) if prefix == CANARY and number.isdigit() else 0


def _slot_alias(slot: int) -> str:
    return CANARY if slot == 1 else f"{CANARY}-{slot}"


SEAL = ".complete"  # written last into a model folder: {relative path: sha256}


def _checksums(folder: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != SEAL:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            sums[str(path.relative_to(folder))] = digest.hexdigest()
    return sums


def seal(folder: Path) -> None:
    """Mark a model folder complete, with checksums to catch a later truncation or bit rot."""
    (folder / SEAL).write_text(json.dumps(_checksums(folder), indent=1))


def is_intact(folder: Path) -> bool:
    """The folder holds exactly the files its seal lists, unchanged. An empty seal (a
    write cut off) lists nothing and proves nothing: not intact, so the copy is fetched
    again."""
    try:
        expected = json.loads((folder / SEAL).read_text())
    except (OSError, ValueError):
        return False
    return bool(expected) and _checksums(folder) == expected


def is_tracking_server(tracking_uri: str) -> bool:
    """An MLflow server (it decides where artifacts go), not a local sqlite store."""
    return tracking_uri.startswith(("http://", "https://"))


def configure_mlflow(tracking_uri: str) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    # It announces every new database's migrations at INFO on stderr.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


# MLflow 3 sorts experiments into kinds: this one holds model-training runs, not GenAI traces.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}
MODEL_NOTE = (
    "An embedding model retrained by embedloop from its users' clicks. Aliases: "
    f"`{CHAMPION}` is what production serves (its index is the live one); `{PREVIOUS}` is "
    f"what `embedloop rollback` returns to; `{CANARY}` (and `{CANARY}-2`, ...), when set, "
    "is a candidate interleaved with the champion for a share of sessions until users' "
    "clicks decide. Each version's tags say how it was judged (`decision`, its score on the "
    "primary metric, `parent_version`, `train_side`), how its canary ended "
    "(`canary_outcome`), and, after its promotion, how its watch against the champion it "
    "replaced ended (`watch_outcome`).")
EXPERIMENT_NOTE = (
    "Retrains of the embedding model `{model}` by embedloop. Each run: the batch's logs "
    "validated (validation/), the candidate and the incumbent scored on the same evaluation "
    "pool (eval/), and the decision, with why, in the run's description. The registered "
    "model's `champion` alias is what production serves.")


class Registry:
    def __init__(self, tracking_uri: str, model_name: str, artifact_root: Path) -> None:
        configure_mlflow(tracking_uri)
        from mlflow import MlflowClient

        self.model_name = model_name
        self.artifact_root = artifact_root
        # A tracking server stores artifacts where it is configured to (S3, MinIO...);
        # only a local sqlite store is told to keep them under mlruns/.
        self.remote = is_tracking_server(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.repairs: list[str] = []  # what was found damaged and fixed, for the summary

    # -- experiments and runs ------------------------------------------------
    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.model_name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND) is None:  # made before the tag was set
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND,
                                               EXPERIMENT_TAGS[EXPERIMENT_KIND])
            return found.experiment_id
        tags = {**EXPERIMENT_TAGS, "mlflow.note.content": EXPERIMENT_NOTE.format(
            model=self.model_name)}
        if self.remote:
            return self.client.create_experiment(self.model_name, tags=tags)
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(self.model_name, tags=tags,
                                             artifact_location=self.artifact_root.as_uri())

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def recent_runs(self, limit: int = 5) -> list[Any]:
        return self.client.search_runs([self.experiment_id()], max_results=limit,
                                       order_by=["attributes.start_time DESC"])

    # -- versions and aliases --------------------------------------------------
    def version_for_alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def version_info(self, version: str) -> Any:
        return self.client.get_model_version(self.model_name, version)

    def log_model(self, run_id: str, model: SentenceTransformer, *, description: str,
                  tags: dict[str, str]) -> str:
        """Log `model` to the run and register it as a new version; returns the version."""
        import mlflow

        with mlflow.start_run(run_id=run_id):
            info = mlflow.sentence_transformers.log_model(
                model, name="model", registered_model_name=self.model_name,
                pip_requirements=MODEL_REQUIREMENTS)
        version = str(info.registered_model_version)
        if version == "1":  # the model was just registered: say what its aliases mean
            self.client.update_registered_model(self.model_name, MODEL_NOTE)
        self.client.update_model_version(self.model_name, version, description=description)
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)
        return version

    def tag_version(self, version: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)

    def document_encoder(self, version: str) -> str:
        """The version whose document encoder `version` uses: itself, unless it was
        trained query-side (then its documents are encoded, and indexed, by an earlier
        version's document route, unchanged)."""
        return self.version_info(version).tags.get(DOCUMENT_ENCODER, str(version))

    def fusion_weight(self, version: str) -> float | None:
        """The fusion weight `version` was judged with, if it was judged as a hybrid."""
        weight = self.version_info(version).tags.get(FUSION_WEIGHT)
        return float(weight) if weight is not None else None

    def aliases(self) -> dict[str, str]:
        """Every alias of the registered model and its version, in one call."""
        from mlflow.exceptions import MlflowException

        try:
            return {a: str(v) for a, v in
                    self.client.get_registered_model(self.model_name).aliases.items()}
        except MlflowException:  # not registered yet
            return {}

    def canaries(self) -> list[tuple[str, str]]:
        """(version, the champion it is judged against) per running canary, by slot."""
        slots = sorted((_slot(a), v) for a, v in self.aliases().items() if _slot(a))
        return [(v, self.version_info(v).tags.get("canary_against", "")) for _, v in slots]

    def set_canary(self, version: str, against: str, slots: int,
                   after: str | None = None) -> None:
        """`version` becomes a canary in the first free slot, judged against champion
        `against` only, on sessions logged after `after` (a log timestamp; None: all).
        Refused when all `slots` are taken."""
        taken = {_slot(a) for a in self.aliases()}
        free = next((n for n in range(1, slots + 1) if n not in taken), None)
        if free is None:
            raise RegistryError(f"all {slots} canary slots are taken; v{version} was not "
                                f"started")
        self.tag_version(version, canary_against=against, canary_after=after or "",
                         canary_since=datetime.now(UTC).isoformat(timespec="seconds"))
        self.client.set_registered_model_alias(self.model_name, _slot_alias(free), version)

    def end_canary(self, version: str, outcome: str) -> bool:
        """Stop canary `version` (its alias goes; `outcome` is tagged on it). False if it
        was not running."""
        alias = next((a for a, v in self.aliases().items() if _slot(a) and v == version), None)
        if alias is None:
            return False
        self.tag_version(version, canary_outcome=outcome[:5000])
        self.client.delete_registered_model_alias(self.model_name, alias)
        return True

    def start_watch(self, version: str, against: str, after: str | None = None) -> None:
        """Champion `version` is interleaved with `against` (the one it replaced) until a
        run judges the watch over, on sessions logged after `after` (None: all)."""
        self.tag_version(version, watch_against=against, watch_status="running",
                         watch_after=after or "",
                         watch_since=datetime.now(UTC).isoformat(timespec="seconds"))

    def watched_against(self, version: str) -> str | None:
        """The version champion `version` is being watched against, if its watch runs."""
        tags = self.version_info(version).tags
        return tags.get("watch_against") if tags.get("watch_status") == "running" else None

    def end_watch(self, version: str, outcome: str) -> None:
        self.tag_version(version, watch_status="over", watch_outcome=outcome[:5000])

    def promote(self, version: str) -> str | None:
        """Make `version` the champion; the old champion becomes `previous`.
        Moving `champion` is the commit point. Returns the old champion."""
        old = self.version_for_alias(CHAMPION)
        if old == version:
            return old
        if old is not None:
            self.client.set_registered_model_alias(self.model_name, PREVIOUS, old)
            self.tag_version(version, promoted_from=old)
        self.tag_version(version, promoted_at=datetime.now(UTC).isoformat(timespec="seconds"))
        self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
        return old

    def rollback(self) -> tuple[str, str]:
        """champion <- previous, previous <- the champion that one replaced (if any)."""
        current = self.version_for_alias(CHAMPION)
        target = self.version_for_alias(PREVIOUS)
        if current is None:
            raise NothingToRollBack(f"model {self.model_name!r} has no champion yet: "
                                    f"nothing to roll back")
        if target is None:
            raise NothingToRollBack(f"champion v{current} is the first champion: there is "
                                    f"no previous version to roll back to")
        before = self.version_info(target).tags.get("promoted_from")
        self.client.set_registered_model_alias(self.model_name, CHAMPION, target)
        if before:
            self.client.set_registered_model_alias(self.model_name, PREVIOUS, before)
        else:
            self.client.delete_registered_model_alias(self.model_name, PREVIOUS)
        self.tag_version(current, rolled_back_at=datetime.now(UTC).isoformat(timespec="seconds"))
        return current, target

    def local_model_path(self, version: str, cache_dir: Path) -> str:
        """A local folder holding `version` (downloaded once, then reused). A cached copy
        whose files no longer match their checksums is downloaded again."""
        import mlflow

        if not version.isdigit():  # it becomes a path below
            raise RegistryError(f"not a model version: {version!r}")
        target = cache_dir / f"v{version}"
        if (target / SEAL).exists() and not is_intact(target):
            self.repairs.append(f"the local copy of model v{version} was damaged (checksum "
                                f"mismatch); downloaded it again from the registry")
            shutil.rmtree(target)
        if not (target / SEAL).exists():
            staging = cache_dir / f".download-v{version}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.model_name}/{version}", dst_path=str(staging))
            seal(staging)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        found = sorted(p.parent for p in target.rglob("modules.json"))
        if not found:
            raise RegistryError(f"model version {version} holds no sentence-transformers model")
        return str(found[0])
