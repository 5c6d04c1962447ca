"""Rollback: the previous champion and the index it built go back live, in one step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from embedloop.config import Settings, load_settings
from embedloop.errors import IndexUnavailable, Refused
from embedloop.index import IndexStore
from embedloop.lock import exclusive
from embedloop.registry import PREVIOUS, Registry
from flows.alerts import notify_failure, refused


@flow(name="rollback", flow_run_name="rollback", on_failure=[notify_failure],
      on_crashed=[notify_failure])
def rollback(reason: str, config_file: str | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """Move `champion` back to `previous` and make its newest index live.

    The target's index must exist (indexes are never deleted by embedloop); the check
    happens before anything moves, so a refused rollback changes nothing.
    """
    settings = load_settings(Path(config_file) if config_file else None, **(overrides or {}))
    try:
        return _rollback(settings, reason)
    except Refused as exc:
        return refused(exc)


def _rollback(settings: Settings, reason: str) -> dict[str, Any]:
    logger = get_run_logger()
    with exclusive(settings.state_dir, f"rollback ({reason})"):
        registry = Registry(settings.resolved_tracking_uri, settings.model_name,
                            settings.artifact_root)
        store = IndexStore(settings.index_dir)
        target = registry.version_for_alias(PREVIOUS)
        index_version = (store.latest_for_model(settings.model_name, target)
                         if target else None)
        if target and index_version is None:
            raise IndexUnavailable(f"v{target} has no index on disk; rollback refused, "
                                   f"nothing changed")
        old, new = registry.rollback()  # raises with a clear message if nothing to roll to
        assert index_version is not None
        store.set_live(index_version)
        run_id = registry.start_run("rollback", {"trigger": "rollback", "reason": reason,
                                                 "decision": "rolled back",
                                                 "decision_reason": f"v{old} -> v{new}"})
        registry.client.set_terminated(run_id, "FINISHED")
        logger.info("rolled back v%s -> v%s; live index %s", old, new, index_version)
        return {"outcome": "rolled back", "from": old, "to": new, "live_index": index_version,
                "previous": registry.version_for_alias(PREVIOUS)}
