"""The team setup, for real: Postgres-backed MLflow and Prefect servers on loopback (what
infra/docker-compose.yml runs), `embedloop serve` serving the deployments against them,
a manual retrain requested through Prefect, and a failing run that alerts a webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_home
from tests.integration.servers import (
    mlflow_server,
    postgres,
    prefect_server,
    s3_client,
    s3_server,
)

BIN = Path(sys.executable).parent
MODEL = "embedloop-minilm"


class Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, sim_logs: Path,
         tiny_beir: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("team")
    hook = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EMBEDLOOP_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
               HF_HUB_OFFLINE="1", PREFECT_HOME=str(root / "prefect-client"))
    with (postgres(("mlflow", "prefect")) as db,
          s3_server("mlflow", env, root / "s3.log") as s3,
          mlflow_server(db, s3, "mlflow", env, root / "mlflow.log") as tracking,
          prefect_server(db, root / "prefect-server", env, root / "prefect.log") as api):
        env.update(PREFECT_API_URL=api, EMBEDLOOP_TRACKING_URI=tracking,
                   EMBEDLOOP_ALERT_WEBHOOK=f"http://127.0.0.1:{hook.server_port}/alert")
        config = make_home(root / "home", sim_logs / "batch-001.jsonl",
                           tiny_beir / "corpus.jsonl", min_improvement=-1.0,
                           significance_alpha=1.0)
        log = (root / "serve.log").open("wb")
        serving = subprocess.Popen([str(BIN / "embedloop"), "serve", "--config", str(config)],
                                   env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield {"env": env, "tracking": tracking, "api": api, "root": root, "s3": s3,
                   "serve_log": root / "serve.log"}
        finally:
            os.killpg(serving.pid, 15)
            serving.wait(timeout=60)
            hook.shutdown()


def prefect(team: dict[str, Any], *args: str, timeout: float = 900) -> str:
    result = subprocess.run([str(BIN / "prefect"), *args], env=team["env"], cwd=team["root"],
                            capture_output=True, text=True, timeout=timeout)
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


def wait_for_deployments(team: dict[str, Any]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "rc=0" in prefect(team, "deployment", "inspect", "rollback/rollback"):
            return
        time.sleep(2)
    pytest.fail("embedloop serve registered no deployments:\n"
                + team["serve_log"].read_text()[-3000:])


def test_manual_retrain_through_the_served_deployment(team: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    wait_for_deployments(team)
    nightly = prefect(team, "deployment", "inspect", "retrain/nightly")
    assert "0 2 * * *" in nightly and "'limit': 1" in nightly.replace('"', "'")

    out = prefect(team, "deployment", "run", "retrain/manual", "-p",  # as in the README
                  "reason=integration: first week", "--watch", "--watch-timeout", "800")
    assert "rc=0" in out and "Completed" in out, out + team["serve_log"].read_text()[-3000:]

    client = MlflowClient(team["tracking"], registry_uri=team["tracking"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "2" and "Decision: promoted" in champion.description
    [run] = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id],
                               "tags.reason = 'integration: first week'")
    assert run.info.status == "FINISHED" and run.data.tags["trigger"] == "manual"
    assert run.data.tags["decision"] == "promoted" and "data_window_start" in run.data.tags
    stored = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/per_query.json", "eval/comparison.png", "eval/champion_history.png"} <= stored
    # ...and they really are in the S3 bucket, model weights included
    s3 = s3_client(team["s3"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for o in page.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/eval/comparison.png") for k in keys)
    assert any(k.endswith("model.safetensors") for k in keys)

    out = prefect(team, "artifact", "inspect", "retrain-summary", "--output", "json")
    [artifact] = json.loads(out.split("\n", 1)[1])
    assert "| decision | PROMOTED |" in artifact["data"]
    assert f"MLflow run: {team['tracking']}/#/experiments/" in artifact["data"]


def test_a_failed_run_alerts_and_changes_nothing(team: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    wait_for_deployments(team)
    client = MlflowClient(team["tracking"], registry_uri=team["tracking"])
    before = client.get_model_version_by_alias(MODEL, "champion").version
    Webhook.received.clear()
    out = prefect(team, "deployment", "run", "retrain/manual", "--params", json.dumps(
        {"reason": "integration: logs gone", "overrides": {"logs": "/nonexistent/logs"}}),
        "--watch", "--watch-timeout", "300")
    assert "Failed" in out, out
    assert client.get_model_version_by_alias(MODEL, "champion").version == before
    deadline = time.monotonic() + 30
    while not Webhook.received and time.monotonic() < deadline:
        time.sleep(0.5)
    [alert] = Webhook.received
    assert alert["state"] == "Failed" and alert["reason"] == "integration: logs gone"
    assert "/nonexistent/logs" in alert["text"] and f"champion v{before}" in alert["text"]


def test_rollback_through_the_served_deployment(team: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    wait_for_deployments(team)
    out = prefect(team, "deployment", "run", "rollback/rollback", "-p",
                  "reason=integration: 3 a.m. rollback", "--watch", "--watch-timeout", "300")
    assert "rc=0" in out and "Completed" in out, out
    client = MlflowClient(team["tracking"], registry_uri=team["tracking"])
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    live = team["root"] / "home" / ".embedloop" / "indexes" / "live"
    assert os.readlink(live) == "versions/v0001"
