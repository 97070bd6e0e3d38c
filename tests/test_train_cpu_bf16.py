"""bf16 autocast of the CPU training step (AMX / AVX512-BF16): it really runs in bf16, its loss and gradients stay
within bf16 rounding of the fp32 reference step, and the weights it trains stay fp32."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY
from conftest import make_model
from train_helpers import SMALL
from train_helpers import TensorDataset

from pipeline.config import get_preset
from training.generator import AnomalyGenerator
from training.generator import GeneratorConfig
from training.generator import sample_seeds
from training.losses import focal_loss
from training.regimes import resolve
from training.step import TrainForward
from training.step import autocast
from training.step import cpu_bf16_for
from training.step import cpu_has_native_bf16
from training.trainer import FitOptions
from training.trainer import fit

CPU = torch.device("cpu")
native = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")


def step(cpu_bf16: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One supervised step on fixed inputs -> (seg map, loss, gradients of the trainable parameters)."""
    model = make_model(TINY, seed=0).train()
    forward = TrainForward(model, AnomalyGenerator(GeneratorConfig(enabled=False)))
    images = torch.randn(4, 3, *TINY.image_size, generator=torch.Generator().manual_seed(1))
    fh, fw = TINY.feature_size
    mask = torch.zeros(4, 1, fh, fw)
    mask[2:, :, 4:9, 6:12] = 1
    label = torch.tensor([0.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        l2, l3 = model.backbone(images)
    with autocast(CPU, True, cpu_bf16):
        seg_map, score, mask_out, label_out = forward(l2, l3, mask, label, sample_seeds(0, 0, range(4)))
    loss = focal_loss(seg_map.float().sigmoid(), mask_out).mean() + focal_loss(score.float(), label_out)
    loss.backward()
    grads = {  # one vector per trainable module (the adaptor's bias alone has a ~0 gradient: BN follows it)
        name: torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        for name, module in model.trainable_modules().items()
    }
    return seg_map, loss.detach(), grads


@native
def test_the_cpu_step_runs_in_bf16_within_rounding_of_fp32():
    ref_map, ref_loss, ref_grads = step(cpu_bf16=False)
    map_, loss, grads = step(cpu_bf16=True)
    assert ref_map.dtype == torch.float32 and map_.dtype == torch.bfloat16  # autocast really took effect
    assert abs(float(loss) - float(ref_loss)) <= 0.02 * abs(float(ref_loss))
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        assert g.dtype == torch.float32  # fp32 master weights get fp32 gradients
        # the cls head's max-pool may pick another position under rounding: direction, not size, is compared
        assert torch.nn.functional.cosine_similarity(g.double(), ref_grads[name].double(), 0) > 0.97, name


def test_fp32_is_the_plain_step():
    ref_map, ref_loss, ref_grads = step(cpu_bf16=False)
    map_, loss, grads = step(cpu_bf16=False)
    assert torch.equal(ref_map, map_) and torch.equal(ref_loss, loss)


@native
def test_fit_in_bf16_trains_fp32_weights_close_to_the_fp32_run():
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL)  # feature-noise anomalies
    data = TensorDataset(8, SMALL, seed=1)
    runs = {}
    for bf16 in (False, True):
        model = make_model(SMALL, seed=0)
        opts = FitOptions(epochs=2, batch_size=4, feature_cache="off", cpu_bf16=bf16, progress=False)
        runs[bf16] = fit(model, data, resolved, opts, CPU, log=lambda _m: None).step_losses, model
    (ref, _), (got, model) = runs[False], runs[True]
    assert len(got) == len(ref) and all(math.isfinite(x) for x in got)
    assert got != ref  # the bf16 run is a different computation ...
    assert max(abs(a - b) / abs(b) for a, b in zip(got, ref)) < 0.05  # ... within rounding of the reference
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_precision_flag(precision):
    expected = {"auto": cpu_has_native_bf16(), "bf16": True, "fp32": False}[precision]
    assert cpu_bf16_for(precision) is expected


def test_step_precision_names_what_autocast_does():
    assert FitOptions(1, 1, cpu_bf16=True).step_precision(CPU) == "bf16"
    assert FitOptions(1, 1, cpu_bf16=False, amp=True).step_precision(CPU) == "fp32"  # amp is CUDA's
    assert FitOptions(1, 1, amp=True).step_precision(torch.device("cuda")) == "bf16"
    assert FitOptions(1, 1, amp=False, cpu_bf16=True).step_precision(torch.device("cuda")) == "fp32"
