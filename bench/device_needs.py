"""Which of the named modules this interpreter cannot import (for bench/device_check.sh; stdlib only).

    python bench/device_needs.py torch torchvision cuda   # exit 0: all there; exit 1: prints what is missing

`cuda` stands for "torch imports and sees a CUDA device".
"""

from __future__ import annotations

import importlib
import sys


def missing(names: list[str]) -> list[str]:
    lacking = []
    for name in names:
        if name == "cuda":
            continue
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or a module that fails while importing (broken CUDA libraries)
            lacking.append(name if isinstance(err, ModuleNotFoundError) else f"{name} ({type(err).__name__}: {err})")
    if "cuda" in names and "torch" not in lacking:
        try:
            import torch

            if not torch.cuda.is_available():
                lacking.append("a CUDA device (torch.cuda.is_available() is False)")
        except Exception as err:
            lacking.append(f"torch ({type(err).__name__}: {err})")
    return lacking


if __name__ == "__main__":
    lacking = missing(sys.argv[1:])
    if lacking:
        print("missing: " + ", ".join(lacking))
        sys.exit(1)
