"""What the kernel tests share: where the kernels run, casts, the error measure, and the real preset shapes."""

from __future__ import annotations

import pytest
import torch

from kernels import common

# CPU-only host: the Triton interpreter on CPU tensors (tests/conftest.py turns it on); GPU host: compiled, CUDA
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    DEVICE == "cpu" and not common.INTERPRET,
    reason="the Triton kernels need CUDA, or TRITON_INTERPRET=1 set before triton is imported (tests/conftest.py)",
)
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="real shapes: a CUDA device (bench/device_check.sh)")

# real sizes (layer2 h, w, layer3 h, w): mvtec (WRN50 at 256x256) and ksdd2 (640x232: odd grids)
PRESET_SHAPES = {"mvtec": (32, 32, 16, 16), "ksdd2": (80, 29, 40, 15)}


def on(dtype: torch.dtype, tensors, device: str = DEVICE) -> list[torch.Tensor]:
    """The tensors on the kernel device in `dtype`, contiguous (floats only; others pass through)."""
    return [t.to(device=device, dtype=dtype).contiguous() if isinstance(t, torch.Tensor) else t for t in tensors]


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    """max |got - truth| / max |truth|, in float64 on the CPU."""
    got, truth = got.detach().double().cpu(), truth.detach().double().cpu()
    return ((got - truth).abs().max() / truth.abs().max()).item()
