"""The `ssn` command of the checkout under test.

The virtual environment's `ssn` script imports `pipeline` through the editable install of the checkout the venv was
installed from: run from another checkout (a second worktree sharing the venv, mutmut's `mutants/` copy) it would
test that other code. `SSN` is `python -m pipeline.cli` and `checkout_env()` puts this checkout first on PYTHONPATH,
so a test's subprocess runs the code next to the test (tests/test_checkout.py proves it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SSN = [sys.executable, "-m", "pipeline.cli"]


def checkout_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) with ROOT first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_ssn(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`ssn ARGS` of this checkout, output captured as text."""
    kwargs["env"] = checkout_env(kwargs.get("env"))
    return subprocess.run([*SSN, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
