"""Rollback: the previous champion and the index it built go back live, in one step."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError
from prefect.states import State

from embedloop.config import load_settings
from embedloop.errors import Refused
from embedloop.flows.alerts import notify_failure, refused
from embedloop.production.champion import Production
from embedloop.production.lock import exclusive


@flow(name="rollback", flow_run_name="rollback", on_failure=[notify_failure],
      on_crashed=[notify_failure])
def rollback(reason: str, config_file: str | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """Move `champion` back to `previous` and make its newest index live.

    The target's index must exist (indexes are never deleted by embedloop); the check
    happens before anything moves, so a refused rollback changes nothing.
    """
    try:
        return rollback_now(reason, config_file, overrides)
    except Refused as exc:
        return refused(exc)


def rollback_now(reason: str, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rollback itself, outside Prefect: what `embedloop rollback` runs when no Prefect
    server is configured, rather than start a temporary one (8-17 s at 3 a.m.) whose
    record would vanish with it. MLflow records the rollback either way."""
    settings = load_settings(Path(config_file) if config_file else None, **(overrides or {}))
    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("embedloop.rollback")
    with exclusive(settings.state_dir, f"rollback ({reason})"):
        production = Production.from_settings(settings)
        done = production.rollback()  # refused, with nothing moved, if it cannot be done
        transition = f"v{done.rolled_back} -> v{done.champion}"
        run_id = production.registry.start_run("rollback", {
            "trigger": "rollback", "reason": reason, "decision": "rolled back",
            "decision_reason": transition, "incumbent_version": str(done.rolled_back),
            "champion_version": str(done.champion)})
        production.registry.client.set_terminated(run_id, "FINISHED")
        logger.info("rolled back %s; live index %s", transition, done.live_index)
        return {"outcome": "rolled back", "from": done.rolled_back, "to": done.champion,
                "live_index": done.live_index, "previous": done.previous}
