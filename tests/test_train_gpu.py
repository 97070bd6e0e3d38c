"""Training on CUDA (run on a GPU host by bench/device_check.sh): bf16 autocast trains, and the feature cache is
exact on the GPU too (cuDNN deterministic, fp32)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model
from train_helpers import SMALL
from train_helpers import TensorDataset
from train_helpers import trainable_state

from pipeline.config import get_preset
from training.regimes import resolve
from training.trainer import FitOptions
from training.trainer import fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/device_check.sh)"),
]


def run(cache: str, amp: bool):
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL)
    model = make_model(SMALL, seed=0)
    opts = FitOptions(epochs=2, batch_size=4, feature_cache=cache, amp=amp, progress=False)
    result = fit(model, TensorDataset(8, SMALL, seed=1), resolved, opts, torch.device("cuda"), log=lambda _m: None)
    return trainable_state(model), result


def test_bf16_autocast_trains():
    state, result = run("off", amp=True)
    assert all(math.isfinite(x) for x in result.step_losses)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())  # weights stay fp32


def test_feature_cache_exact_on_cuda():
    plain, a = run("off", amp=False)
    cached, b = run("memory", amp=False)
    assert a.step_losses == b.step_losses
    assert all(torch.equal(plain[k], cached[k]) for k in plain)
