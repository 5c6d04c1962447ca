"""The team setup, for real: Postgres-backed MLflow and Prefect servers on loopback (what
infra/docker-compose.yml runs), `embedloop serve` serving the deployments against them,
a manual retrain requested through Prefect, and a failing run that alerts a webhook."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import simulate
from tests.helpers import make_home
from tests.integration.servers import (
    Partition,
    mlflow_server,
    postgres,
    prefect_server,
    restart_postgres,
    s3_client,
    s3_server,
)
from tests.zygote import Zygote

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
         tiny_beir: Path, zygote: Zygote) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("team")
    hook = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EMBEDLOOP_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
               HF_HUB_OFFLINE="1", PREFECT_HOME=str(root / "prefect-client"))
    with (postgres(("mlflow", "prefect")) as db,
          s3_server("mlflow", env, root / "s3.log") as s3,
          prefect_server(db, root / "prefect-server", env, root / "prefect.log") as api,
          contextlib.ExitStack() as stack):
        # MLflow reaches S3 through a link the outage tests can cut
        s3_link = Partition(int(s3.rsplit(":", 1)[1]))
        tracking = stack.enter_context(mlflow_server(
            db, f"http://127.0.0.1:{s3_link.port}", "mlflow", env, root / "mlflow.log"))
        # ...and the MLflow outage tests' runs reach MLflow through one (cutting a link
        # costs nothing; stopping and restarting MLflow took ~15 s each time)
        mlflow_link = Partition(int(tracking.rsplit(":", 1)[1]))
        env.update(PREFECT_API_URL=api, EMBEDLOOP_TRACKING_URI=tracking,
                   EMBEDLOOP_ALERT_WEBHOOK=f"http://127.0.0.1:{hook.server_port}/alert")
        # any candidate wins (the outage tests need runs that reach the commit point):
        # no minimum gain, no significance test, no harm margin
        config = make_home(root / "home", sim_logs / "batch-001.jsonl",
                           tiny_beir / "corpus.jsonl", min_improvement=-1.0,
                           significance_alpha=1.0, harm_margin=1.0)
        log = (root / "serve.log").open("wb")
        # `embedloop serve` reaches the Prefect API through a link a test can cut
        api_link = Partition(int(api.rsplit(":", 1)[1].split("/")[0]))
        serve_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{api_link.port}/api"}
        serving = subprocess.Popen([str(BIN / "embedloop"), "serve", "--config", str(config)],
                                   env=serve_env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield {"env": env, "tracking": tracking, "api": api, "root": root, "s3": s3,
                   "serve_log": root / "serve.log", "mlflow_link": mlflow_link,
                   "via_mlflow_link": f"http://127.0.0.1:{mlflow_link.port}", "config": config,
                   "db": db, "s3_link": s3_link, "api_link": api_link,
                   "serving": serving, "zygote": zygote}
        finally:
            os.killpg(serving.pid, 15)
            serving.wait(timeout=60)
            hook.shutdown()
            shutil.rmtree(root / "home", ignore_errors=True)  # ~700 MB of model copies


def prefect(team: dict[str, Any], *args: str, timeout: float = 900) -> str:
    result = subprocess.run([str(BIN / "prefect"), *args], env=team["env"], cwd=team["root"],
                            capture_output=True, text=True, timeout=timeout)
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


def wait_for_deployments(team: dict[str, Any]) -> None:
    """Until `embedloop serve` has registered its deployments, asked of the API itself
    (a `prefect` CLI process per look cost ~3.5 CPU-seconds)."""
    url = f"{team['api']}/deployments/name/rollback/rollback"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError):  # 404 (HTTPError) until it is
            with urllib.request.urlopen(url, timeout=30) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    pytest.fail("embedloop serve registered no deployments:\n"
                + team["serve_log"].read_text()[-3000:])


def test_manual_retrain_through_the_served_deployment(team: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    wait_for_deployments(team)
    nightly = prefect(team, "deployment", "inspect", "retrain/nightly")
    assert "0 2 * * 1-6" in nightly and "'limit': 1" in nightly.replace('"', "'")
    full = prefect(team, "deployment", "inspect", "retrain/weekly-full")
    assert "0 2 * * 0" in full and "'train_side': 'full'" in full.replace('"', "'")

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


def test_rollback_through_the_served_deployment_after_an_api_outage(
        team: dict[str, Any]) -> None:
    """The Prefect API is cut off from `embedloop serve` and comes back (a network blip, a
    server upgrade): serve rides it out, and the rollback requested afterwards runs."""
    from mlflow import MlflowClient

    wait_for_deployments(team)
    team["api_link"].set_cut(True)
    # the runner polls every 10 s; on a loaded machine a poll can come late, so wait for
    # the first refused connection (up to a minute) rather than a fixed time
    deadline = time.monotonic() + 60
    while team["api_link"].refused == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert team["api_link"].refused > 0, "serve did not try the API during the outage"
    time.sleep(3)  # time for serve to meet the failed poll: it must not die of it
    assert team["serving"].poll() is None, team["serve_log"].read_text()[-3000:]
    team["api_link"].set_cut(False)
    out = prefect(team, "deployment", "run", "rollback/rollback", "-p",
                  "reason=integration: 3 a.m. rollback", "--watch", "--watch-timeout", "300")
    assert "rc=0" in out and "Completed" in out, out
    client = MlflowClient(team["tracking"], registry_uri=team["tracking"])
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    live = team["root"] / "home" / ".embedloop" / "indexes" / "live"
    assert os.readlink(live) == "versions/v0001"


def retrain_with_outage_at(team: dict[str, Any], point: str, logs: Path,
                           outage: Callable[[], None], restore: Callable[[], None], *,
                           tracking: str | None = None) -> subprocess.CompletedProcess[str]:
    """`embedloop retrain` on `logs`, recorded in the team's Prefect server; at `point`
    the pipeline waits while `outage` happens, then goes on. `restore` mends it after.
    `tracking`: where the run finds MLflow, if not straight at the server."""
    flag = team["root"] / f"paused-{point}"
    env = {**team["env"], "EMBEDLOOP_PAUSE_AT": point, "EMBEDLOOP_PAUSE_FILE": str(flag),
           "EMBEDLOOP_TRACKING_URI": tracking or team["tracking"],
           # MLflow's client retries for minutes by default; an outage test need not wait
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    process = team["zygote"].spawn(["retrain", "--reason", f"outage at {point}", "--config",
                                    str(team["config"]), "--logs", str(logs)], env,
                                   cwd=team["root"])
    deadline = time.monotonic() + 600
    while not flag.exists():
        if process.poll() is not None:  # ended without reaching the point: say how
            out, err = process.communicate()
            pytest.fail(f"the run ended (rc {process.returncode}) before {point}:\n"
                        f"{out[-3000:]}\n{err[-2000:]}")
        assert time.monotonic() < deadline, f"the run never reached {point}"
        time.sleep(0.2)
    outage()
    flag.unlink()
    result = process.completed(timeout=600)
    restore()
    return result


def production(team: dict[str, Any]) -> tuple[str, str, str]:
    """(champion version in the registry, the version whose document encoder it uses,
    the version whose document encoder built the live index): whole when the last two
    agree."""
    from mlflow import MlflowClient

    client = MlflowClient(team["tracking"], registry_uri=team["tracking"])
    live = team["root"] / "home" / ".embedloop" / "indexes" / "live"
    manifest = json.loads((live / "manifest.json").read_text())
    champion = client.get_model_version_by_alias(MODEL, "champion")
    encoder = champion.tags.get("document_encoder", str(champion.version))
    return str(champion.version), encoder, manifest["model_version"]


def later_week(team: dict[str, Any], tiny_beir: Path, seed: int) -> Path:
    """One more simulated week in the outage tests' own log folder (rows a failed run
    left unread stay there for the next)."""
    logs = team["root"] / "later-weeks"
    simulate(tiny_beir, team["root"] / f"sim-{seed}", "--batches", "1", "--seed", str(seed))
    logs.mkdir(exist_ok=True)
    (logs / f"week-{seed}.jsonl").write_bytes(
        (team["root"] / f"sim-{seed}" / "batch-001.jsonl").read_bytes())
    return logs


def ledger_text(team: dict[str, Any]) -> str:
    return (team["root"] / "home" / ".embedloop" / "ledger.json").read_text()


def test_mlflow_down_after_the_alias_move_is_a_complete_promotion_said_so(
        team: dict[str, Any], tiny_beir: Path) -> None:
    """Between moving `champion` and swapping the index, MLflow goes out of reach: the swap
    (local) still happens, so production is whole, and the one-line error says it is."""
    wait_for_deployments(team)
    before = production(team)
    result = retrain_with_outage_at(team, "promote", later_week(team, tiny_beir, 7),
                                    lambda: team["mlflow_link"].set_cut(True),
                                    lambda: team["mlflow_link"].set_cut(False),
                                    tracking=team["via_mlflow_link"])
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("embedloop retrain: error: the promotion is complete (champion v")
    champion, encoder, built_by = production(team)
    assert encoder == built_by and champion != before[0]  # moved, and whole
    assert f"champion v{champion}," in error


def test_mlflow_down_before_the_alias_move_fails_and_changes_nothing(
        team: dict[str, Any], tiny_beir: Path) -> None:
    """MLflow out of reach after the candidate's index is written, before `champion`
    moves: a clear failure; production and the ledger stay as they were."""
    wait_for_deployments(team)
    before, ledger = production(team), ledger_text(team)
    result = retrain_with_outage_at(team, "publish", later_week(team, tiny_beir, 8),
                                    lambda: team["mlflow_link"].set_cut(True),
                                    lambda: team["mlflow_link"].set_cut(False),
                                    tracking=team["via_mlflow_link"])
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("embedloop retrain: ") and "Traceback" not in result.stderr
    assert production(team) == before and ledger_text(team) == ledger


def test_s3_unreachable_while_the_model_is_logged_fails_and_changes_nothing(
        team: dict[str, Any], tiny_beir: Path) -> None:
    """The artifact store cut off just before the candidate is logged: a clear failure,
    production and the ledger as they were."""
    wait_for_deployments(team)
    before, ledger = production(team), ledger_text(team)
    result = retrain_with_outage_at(team, "register", later_week(team, tiny_beir, 9),
                                    lambda: team["s3_link"].set_cut(True),
                                    lambda: team["s3_link"].set_cut(False))
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("embedloop retrain: ") and "Traceback" not in result.stderr
    assert production(team) == before and ledger_text(team) == ledger


def test_postgres_restarted_mid_run_is_survived_and_nothing_was_lost(
        team: dict[str, Any]) -> None:
    """The database behind MLflow and Prefect restarts before the alias move: the run
    reconnects and completes, production moves whole, and it reads the weeks the two
    failed runs above left unread: an outage never stops later runs for good."""
    wait_for_deployments(team)
    before = production(team)
    logs = team["root"] / "later-weeks"
    result = retrain_with_outage_at(team, "publish", logs,
                                    lambda: restart_postgres(team["db"]), lambda: None)
    assert result.returncode == 0, result.stderr[-3000:]
    champion, encoder, built_by = production(team)
    assert encoder == built_by and champion != before[0]
    read = {Path(k).name for k in json.loads(ledger_text(team))["cursors"]}
    assert {"week-8.jsonl", "week-9.jsonl"} <= read
