"""Which of the named needs this interpreter and host lack (for bench/device_check.sh; stdlib only).

    python bench/device_needs.py torch torchvision cuda   # exit 0: all there; exit 1: prints what is missing

A need is a module to import, or one of these words: `cuda` (torch imports and sees a CUDA device),
`tritonserver` (a tritonserver binary on PATH or in /opt/tritonserver/bin, as in the NGC image); `a|b` is met by
either of its parts.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys

HOST_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"


def _module_problem(name: str) -> str | None:
    try:
        importlib.import_module(name)
    except Exception as err:  # ImportError, or a module that fails while importing (broken CUDA libraries)
        return name if isinstance(err, ModuleNotFoundError) else f"{name} ({type(err).__name__}: {err})"
    return None


def _problem(name: str, lacking: list[str]) -> str | None:
    if "|" in name:
        problems = [_problem(part, lacking) for part in name.split("|")]
        return None if None in problems else " or ".join(problems)
    if name == "tritonserver":
        found = shutil.which("tritonserver") or os.path.isfile(HOST_TRITONSERVER)
        return None if found else f"a tritonserver binary (PATH, {HOST_TRITONSERVER})"
    if name == "cuda":
        if "torch" in lacking:
            return None  # said already
        try:
            import torch

            return None if torch.cuda.is_available() else "a CUDA device (torch.cuda.is_available() is False)"
        except Exception as err:
            return f"torch ({type(err).__name__}: {err})"
    return _module_problem(name)


def missing(names: list[str]) -> list[str]:
    lacking: list[str] = []
    for name in sorted(names, key=lambda n: n == "cuda"):  # `cuda` last: not repeated when torch is missing
        problem = _problem(name, lacking)
        if problem is not None:
            lacking.append(problem)
    return lacking


if __name__ == "__main__":
    lacking = missing(sys.argv[1:])
    if lacking:
        print("missing: " + ", ".join(lacking))
        sys.exit(1)
