"""What on-call hears when a run fails: a Prefect state hook on every flow.

The hook logs one ERROR line and, when `EMBEDLOOP_ALERT_WEBHOOK` is set, POSTs the same
facts as JSON (Slack-style `text` included) to it. It states what production looks like
after the failure, read from the registry and the index store, so the reader can
compare it with what it was (a failed run never moves either; `embedloop status`).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from prefect.states import Completed, State

from embedloop.config import load_settings
from embedloop.errors import Refused
from embedloop.production.champion import Production

WEBHOOK_ENV = "EMBEDLOOP_ALERT_WEBHOOK"
logger = logging.getLogger("embedloop.alerts")


def production_now(parameters: dict[str, Any]) -> dict[str, str | None]:
    """Champion and live index as they stand, for the run's own settings."""
    try:
        config = parameters.get("config_file")
        settings = load_settings(Path(config) if config else None,
                                 **(parameters.get("overrides") or {}))
        state = Production.from_settings(settings).state()
        return {"model": state.model_name, "champion": state.champion,
                "live_index": state.live_index}
    except Exception as exc:  # the alert must still go out
        return {"model": None, "champion": None, "live_index": None,
                "unknown_because": f"{type(exc).__name__}: {exc}"}


def failure_payload(flow_name: str, run_name: str, run_id: str, state_name: str,
                    message: str, parameters: dict[str, Any],
                    production: dict[str, str | None]) -> dict[str, Any]:
    champion = production.get("champion")
    where = (f"production now: champion v{champion}, live index "
             f"{production.get('live_index')}" if champion
             else "production state unknown: check `embedloop status`")
    text = (f"embedloop {flow_name} run {run_name} {state_name.upper()}: {message} | "
            f"{where}")
    return {"text": text, "flow": flow_name, "flow_run": run_name, "flow_run_id": run_id,
            "state": state_name, "message": message, "reason": parameters.get("reason"),
            "trigger": parameters.get("trigger"), **production}


def refused(exc: Refused) -> State:
    """A flow's answer to a declined request: a completed run named Refused, so neither
    the failure hook nor an automation on Failed fires, and the UI says what happened."""
    return Completed(name="Refused", message=str(exc),
                     data={"outcome": "refused", "decision_reason": str(exc)})


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure` / `on_crashed` hook."""
    message = (state.message or state.name).strip()
    parameters = dict(flow_run.parameters or {})
    payload = failure_payload(flow.name, flow_run.name, str(flow_run.id), state.name, message,
                              parameters, production_now(parameters))
    send_alert(payload)


def send_alert(payload: dict[str, Any]) -> None:
    """Log `payload["text"]` as an ERROR and POST the payload to EMBEDLOOP_ALERT_WEBHOOK."""
    logger.error(payload["text"])
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except OSError as exc:  # a dead webhook must not hide the original failure
        logger.error("alert webhook %s failed: %s", url, exc)
