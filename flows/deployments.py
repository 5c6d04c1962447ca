"""The Prefect deployments: a nightly scheduled retrain (query side, six nights a week),
a weekly full retrain (both encoders and a re-index, on the seventh), a manual retrain
that asks for a reason, and a manual rollback. `embedloop serve` serves them from one local process
(against PREFECT_API_URL, or a local server it starts); infra/prefect.yaml declares the
same four for a work pool and its workers.

One retrain at a time: each deployment has a concurrency limit of one (a second request
queues until the first has finished), and the flows take an OS lock on the state
directory, so a retrain started by any other route is refused with a clear message.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from embedloop.flows.retrain import retrain
from embedloop.flows.rollback import rollback

NIGHTLY_CRON = "0 2 * * 1-6"
WEEKLY_FULL_CRON = "0 2 * * 0"  # the seventh night: in place of the nightly run, not beside it
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1,
                                       collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(config_file: str | None = None, overrides: dict[str, Any] | None = None,
                      cron: str = NIGHTLY_CRON, timezone: str = "UTC",
                      full_cron: str = WEEKLY_FULL_CRON) -> list[Any]:
    common: dict[str, Any] = {"config_file": config_file} if config_file else {}
    if overrides:
        common["overrides"] = overrides
    full = {**common, "overrides": {**(overrides or {}), "train_side": "full"}}
    return [
        retrain.to_deployment(
            name="nightly", schedules=[Cron(cron, timezone=timezone)],
            parameters={**common, "reason": "nightly schedule", "trigger": "schedule"},
            concurrency_limit=ONE_AT_A_TIME, tags=["embedloop", "scheduled"],
            description=f"Retrain on the logs that arrived since the last run ({cron} "
                        f"{timezone}); promote only on a credible improvement. Trains what "
                        f"`train_side` says (default: the query encoder only, no re-index)."),
        retrain.to_deployment(
            name="weekly-full", schedules=[Cron(full_cron, timezone=timezone)],
            parameters={**full, "reason": "weekly full retrain", "trigger": "schedule"},
            concurrency_limit=ONE_AT_A_TIME, tags=["embedloop", "scheduled"],
            description=f"Retrain both encoders and re-index the corpus ({full_cron} "
                        f"{timezone}); promote only on a credible improvement."),
        retrain.to_deployment(
            name="manual", parameters={**common, "trigger": "manual"},
            concurrency_limit=ONE_AT_A_TIME, tags=["embedloop", "manual"],
            description="Retrain now. Give the reason: `prefect deployment run "
                        "retrain/manual -p reason=\"...\"`."),
        rollback.to_deployment(
            name="rollback", parameters=common, concurrency_limit=ONE_AT_A_TIME,
            tags=["embedloop", "manual"],
            description="Put the previous champion and its index back live. Give the "
                        "reason: `prefect deployment run rollback/rollback -p reason=\"...\"`."),
    ]


def serve_deployments(config_file: str | None = None, overrides: dict[str, Any] | None = None,
                      cron: str = NIGHTLY_CRON, timezone: str = "UTC",
                      full_cron: str = WEEKLY_FULL_CRON) -> None:
    """Blocks, running scheduled and requested runs, until interrupted. The nightly
    schedule stays active across restarts of this process."""
    from prefect import serve

    serve(*build_deployments(config_file, overrides, cron, timezone, full_cron),
          pause_on_shutdown=False)
