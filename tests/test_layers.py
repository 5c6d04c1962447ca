"""The layers hold: src/embedloop (the pure library) imports neither Prefect nor the
pipeline built on it (tasks/, flows/). ruff's banned-api rule says so for every import
statement; the second test checks what importing the library really loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_passes_with_the_import_ban_on() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "flows", "tasks",
                             "tests", "bench"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_every_library_module_loads_no_prefect() -> None:
    probe = ("import importlib, pkgutil, sys, embedloop\n"
             "for m in pkgutil.iter_modules(embedloop.__path__):\n"
             "    importlib.import_module('embedloop.' + m.name)\n"
             "print(sorted({n.split('.')[0] for n in sys.modules}"
             " & {'prefect', 'flows', 'tasks'}))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO / "tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
