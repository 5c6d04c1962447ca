"""`embedloop` processes forked from one that has already imported the heavy libraries.

A fresh `embedloop retrain` spends ~16 s of this 2-core machine importing PyTorch,
sentence-transformers, Great Expectations and MLflow before it reads a row, and the fault
tests start a dozen of them. The zygote imports those once. Each process the tests ask
for is a fork of it that takes its own environment, working directory and arguments,
then runs what the `embedloop` script runs (`embedloop.flows.cli.main`, with Prefect and
embedloop imported fresh, so their settings come from that environment) and exits as a
Python process does: atexit handlers, flushed streams, its exit code.

It is a real process: its own pid, signals (SIGKILL kills it mid-write as the OOM killer
would; SIGTERM runs the CLI's handler), stdout, stderr and exit status. Only the import
of third-party code is shared, and the zygote refuses to fork if that import started a
thread (a fork copies only the forking thread).

A run may first enter a mount namespace of its own, as `unshare --user --map-root-user
--mount sh -c SETUP` would, for a fault on a real filesystem seen by that one process.

Protocol, one JSON object per line: the test writes {"args", "env", "cwd", "stdout",
"stderr", "mounts"}; the zygote answers {"pid"} at once and {"exited", "returncode"} when the
child ends (negative: the signal that killed it, as in `subprocess`).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000  # <sched.h>

# What every embedloop run imports and the fault tests should not pay for each time.
# Not Prefect or embedloop: Prefect reads its settings (API URL, home) at import.
PRELOAD = ("torch", "sentence_transformers", "great_expectations", "mlflow", "faiss",
           "pandas", "pyarrow.parquet")


class Forked:
    """One forked `embedloop` run, answering as much of `subprocess.Popen` as the tests
    use."""

    def __init__(self, zygote: Zygote, pid: int, stdout: Path, stderr: Path,
                 args: list[str]) -> None:
        self.zygote, self.pid, self.args = zygote, pid, args
        self._stdout, self._stderr = stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.zygote._read_exits(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.zygote._read_exits(0.1)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (self._stdout.read_text(errors="replace"),
                self._stderr.read_text(errors="replace"))

    def completed(self, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        out, err = self.communicate(timeout)
        assert self.returncode is not None
        return subprocess.CompletedProcess(self.args, self.returncode, out, err)


class Zygote:
    """The test side: starts the zygote process (its imports run while the tests go on)
    and forks runs from it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen([sys.executable, "-m", "tests.zygote"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        cwd=Path(__file__).resolve().parents[1])
        self.children: dict[int, Forked] = {}
        self._buffer = b""
        self._count = 0

    def spawn(self, args: list[str], env: dict[str, str], cwd: Path | None = None,
              mounts: str | None = None) -> Forked:
        """`embedloop *args`, started as a fork of the zygote; `mounts`: a shell command
        run first, as root of a private user and mount namespace."""
        self._count += 1
        out = self.workdir / f"run-{self._count}.out"
        err = self.workdir / f"run-{self._count}.err"
        request = {"args": args, "env": env, "cwd": str(cwd or os.getcwd()),
                   "stdout": str(out), "stderr": str(err), "mounts": mounts}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        while True:
            message = self._next_message(timeout=600)
            if "pid" in message:
                child = Forked(self, message["pid"], out, err, ["embedloop", *args])
                self.children[child.pid] = child
                return child
            self._record_exit(message)

    def run(self, args: list[str], env: dict[str, str], cwd: Path | None = None,
            mounts: str | None = None, timeout: float = 600,
            ) -> subprocess.CompletedProcess[str]:
        return self.spawn(args, env, cwd, mounts).completed(timeout)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def _read_exits(self, timeout: float) -> None:
        message = self._next_message(timeout, block=False)
        while message is not None:
            self._record_exit(message)
            message = self._next_message(0, block=False)

    def _record_exit(self, message: dict[str, Any]) -> None:
        if "error" in message:
            raise RuntimeError(f"zygote: {message['error']}")
        self.children[message["exited"]].returncode = message["returncode"]

    def _next_message(self, timeout: float, block: bool = True) -> Any:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left < 0 and not block:
                return None
            if left < 0:
                raise TimeoutError("the zygote did not answer")
            if select.select([fd], [], [], max(left, 0))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"the zygote died (rc {self.process.wait()})")
                self._buffer += chunk
            elif not block:
                return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def _serve() -> None:
    """The zygote: import, then fork a child per request and report each child's end."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    for module in PRELOAD:
        __import__(module)
    if threading.active_count() != 1:
        names = [t.name for t in threading.enumerate()]
        replies.write(json.dumps({"error": f"threads after import: {names}"}) + "\n")
        return
    requests = b""
    open_input = True
    running: set[int] = set()
    while open_input or running:
        if open_input and select.select([0], [], [], 0.05)[0]:
            chunk = os.read(0, 65536)
            open_input = bool(chunk)
            requests += chunk
            while b"\n" in requests:
                line, requests = requests.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    replies.close()
                    raise SystemExit(_child(json.loads(line)))
                running.add(pid)
                replies.write(json.dumps({"pid": pid}) + "\n")
        elif not open_input:
            time.sleep(0.05)
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                replies.write(json.dumps({"exited": pid,
                                          "returncode": _returncode(status)}) + "\n")


def _child(request: dict[str, Any]) -> int:
    """In the fork: become `embedloop *args` in the given environment."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY),
                           (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, mode, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    if request["mounts"]:
        _private_mounts(request["mounts"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # as the console script starts: its own folder first, not the repo the zygote ran in
    sys.path[0] = str(Path(sys.executable).parent)
    sys.argv = [str(Path(sys.executable).parent / "embedloop"), *request["args"]]
    from embedloop.flows.cli import main

    return main()


def _private_mounts(setup: str) -> None:
    """What `unshare --user --map-root-user --mount sh -c SETUP` does before its exec: a
    user namespace in which this process is root, a mount namespace whose mounts no other
    process sees, and SETUP run in them."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    subprocess.run(["sh", "-c", f"mount --make-rprivate / && {setup}"], check=True)


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    _serve()
