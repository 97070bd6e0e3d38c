"""Subprocess tests run the checkout under test (tests/checkout.py), not the one the venv was installed from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from checkout import ROOT
from checkout import SSN
from checkout import checkout_env


def _source(loaded: str) -> str:
    """`python -v` names a source file, or its cached bytecode quoted: '.../__pycache__/cli.cpython-311.pyc'."""
    path = Path(loaded.strip("'"))
    if path.parent.name == "__pycache__":
        path = path.parent.parent / (path.name.split(".")[0] + ".py")
    return str(path)


def test_ssn_imports_the_pipeline_next_to_the_tests(tmp_path):
    """`python -v` names every source file it loads: the CLI module and the subcommand's come from ROOT, also when
    the command runs in another directory."""
    command = [SSN[0], "-v", *SSN[1:], "info", "--preset", "tiny", "--json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=checkout_env())
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = [
        _source(line.split(" from ", 1)[1])
        for line in out.stderr.splitlines()
        if line.startswith("# code object from ")
    ]
    ours = [path for path in loaded if "/pipeline/" in path]
    assert str(ROOT / "pipeline" / "cli.py") in ours and str(ROOT / "pipeline" / "config.py") in ours
    assert all(path.startswith(str(ROOT / "pipeline")) for path in ours), ours


def test_the_installed_console_script_with_the_checkout_env(tmp_path):
    """The venv's `ssn` entry point dispatches too, and with checkout_env() it also runs this checkout's code."""
    script = Path(sys.executable).parent / "ssn"
    command = [sys.executable, "-v", str(script), "info", "--preset", "tiny"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=checkout_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train.perlin_threshold" in out.stdout
    loaded = [
        _source(line.split(" from ", 1)[1])
        for line in out.stderr.splitlines()
        if line.startswith("# code object from ")
    ]
    assert str(ROOT / "pipeline" / "cli.py") in loaded
