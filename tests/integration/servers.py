"""Postgres, a Postgres-backed MLflow tracking server and a Postgres-backed Prefect server,
started from the packages on this machine on loopback: the team setup of
infra/docker-compose.yml without Docker."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} not found: install the postgresql package "
                    f"(.ci/run does) to run the team-setup integration test")
    return found


def wait_for(url: str, process: subprocess.Popen[bytes], what: str, log: Path,
             timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n"
                               f"{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


POSTGRES_RESTART: dict[str, list[str]] = {}  # dsn -> the command that restarts it


def restart_postgres(dsn: str) -> None:
    """A database restart (an upgrade, a failover): every open connection is dropped."""
    subprocess.run(POSTGRES_RESTART[dsn], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres(databases: tuple[str, ...]) -> Iterator[str]:
    """A throwaway cluster on a loopback port; yields 'user@127.0.0.1:port'."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="embedloop-pg-"))  # not under a root-only dir
    pg_ctl = [*as_postgres, pg_bin("pg_ctl"), "-D", str(data / "db")]
    if as_postgres:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run([*as_postgres, pg_bin("initdb"), "-D", str(data / "db"), "-U", "embedloop",
                    "--auth=trust", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, pg_bin("pg_ctl"), "-D", str(data / "db"), "-w", "-l",
                    str(data / "log"), "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        for db in databases:
            subprocess.run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "embedloop",
                            "-d", "postgres", "-c", f"CREATE DATABASE {db}"], check=True,
                           capture_output=True)
        dsn = f"embedloop@127.0.0.1:{port}"
        # -l: the restarted server must not inherit (and hold open) the caller's pipes
        POSTGRES_RESTART[dsn] = [*pg_ctl, "-w", "-m", "fast", "-l", str(data / "log"),
                                 "restart"]
        yield dsn
    finally:
        subprocess.run([*as_postgres, pg_bin("pg_ctl"), "-D", str(data / "db"), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], health: str, what: str,
           log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        # cwd: beside its log, not the starting test's own temp dir, which is removed
        # when that test passes (a server restarted mid-module would lose its cwd)
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=log.parent)
    try:
        wait_for(health, process, what, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "embedloop", "AWS_SECRET_ACCESS_KEY": "embedloop-test",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@contextlib.contextmanager
def s3_server(bucket: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """An S3-compatible server (moto) standing in for MinIO; yields its endpoint URL with
    `bucket` created."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with server([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                {**env, **S3_CREDENTIALS}, f"{endpoint}/moto-api/", "S3 server", log):
        s3_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint


@contextlib.contextmanager
def mlflow_server(db: str, s3_endpoint: str, bucket: str, env: dict[str, str],
                  log: Path) -> Iterator[str]:
    """Runs in Postgres, artifacts in S3 behind the server's artifact proxy (as in
    docker-compose.yml). Yields the tracking URI."""
    port = free_port()
    env = {**env, **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as infra/docker-compose.yml
    with server([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", f"postgresql+psycopg2://{db}/mlflow",
                 "--artifacts-destination", f"s3://{bucket}/artifacts", "--serve-artifacts",
                 "--workers", "1"],
                env, f"http://127.0.0.1:{port}/health", "MLflow server", log):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def prefect_server(db: str, home: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """Yields PREFECT_API_URL."""
    port = free_port()
    env = {**env, "PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{db}/prefect"}
    with server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(port)],
                env, f"http://127.0.0.1:{port}/api/health", "Prefect server", log):
        yield f"http://127.0.0.1:{port}/api"


class Partition:
    """A TCP forwarder between a client and a server that a test can cut: while cut, new
    connections are refused and open ones are closed, as a network partition would."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = False
        self.refused = 0  # connections tried while cut: proof the outage was felt
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for conn in list(self._open):
                # shutdown first: a bare close() from this thread neither wakes the pipe
                # thread blocked in recv() nor tells the client, whose keep-alive
                # connection would then look open for as long as it stays idle
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if self.cut:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for conn in (source, sink):
            self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
