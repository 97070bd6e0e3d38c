"""Training settings checked by their effect, against the spec's values (spec §2.1, §2.3, §2.5): the synthetic-noise
std that reaches the generator, gradient clipping inside a real training step, one anomaly seed per sample of an
epoch, and the stop-gradient and clipping each supervision regime gives the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_model
from torch.utils.data import default_collate
from train_helpers import SMALL
from train_helpers import TensorDataset

from pipeline.config import PRESETS
from pipeline.config import get_preset
from training import trainer
from training.distributed import DistInfo
from training.generator import AnomalyGenerator
from training.generator import sample_seeds
from training.losses import focal_loss
from training.optim import build_optimizer
from training.regimes import REGIMES
from training.regimes import resolve
from training.step import TrainForward
from training.step import prepare_batch
from training.trainer import FitOptions
from training.trainer import fit
from training.trainer import train_step

CPU = torch.device("cpu")
SPEC_NOISE_STD = 0.015  # spec §2.1: eps ~ N(0, 0.015^2), for every preset and regime
SPEC_MAX_GRAD_NORM = 1.0  # spec §2.3: clip_grad_norm_(model.parameters(), 1) when clip_grad
# spec §2.5: regime -> (stop_grad, clip_grad)
SPEC_REGIMES = {
    "unsupervised": (True, False),
    "supervised": (False, True),
    "mixed": (False, True),
    "weak": (False, True),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_synthetic_noise_std_that_reaches_the_generator(preset):
    """The generator built from the resolved run config (as the trainer builds it) adds noise of std 0.015 inside the
    Perlin masks and none outside, whatever the preset and regime."""
    assert set(REGIMES) == set(SPEC_REGIMES)
    for regime in REGIMES:
        resolved = resolve(get_preset(preset), regime)
        if not resolved.generator.enabled:  # synthetic_with_masks=False (test_without_synthetic_anomalies_...)
            continue
        adapted = torch.zeros(16, 64, 24, 24)
        out = AnomalyGenerator(resolved.generator)(
            adapted, None, torch.zeros(16, 1, 24, 24), torch.zeros(16), sample_seeds(7, 0, range(16))
        )
        inside = out.noise_mask.expand_as(out.adapted) > 0
        noise = out.adapted[inside]
        assert noise.numel() > 3000, (preset, regime)  # std within ~1.3% of its value
        assert float(noise.std()) == pytest.approx(SPEC_NOISE_STD, rel=0.05), (preset, regime)
        assert not out.adapted[~inside].any()


def _grads_after_one_step(regime: str, clip: bool | None = None) -> torch.Tensor:
    """All parameter gradients after one real `train_step` (they stay in .grad after the optimizer step)."""
    resolved = resolve(get_preset("tiny"), regime, model=SMALL)
    if clip is not None:
        resolved = dataclasses.replace(resolved, train=dataclasses.replace(resolved.train, clip_grad=clip))
    model = make_model(resolved.model, seed=0).train()
    data = TensorDataset(4, SMALL, n_defect=2, seed=1)
    samples = default_collate([data[i] for i in range(len(data))])
    batch = prepare_batch(model, samples, resolved.mask_align_corners, CPU, amp=False)
    forward = TrainForward(model, AnomalyGenerator(resolved.generator))
    opts = FitOptions(epochs=1, batch_size=4, progress=False)
    seeds = sample_seeds(resolved.train.seed, 0, range(4))
    train_step(model, forward, build_optimizer(model, resolved.train), batch, seeds, resolved, opts, CPU, DistInfo())
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


def test_supervised_step_clips_the_global_gradient_norm_to_1():
    raw = _grads_after_one_step("supervised", clip=False)
    clipped = _grads_after_one_step("supervised")  # the regime's own setting: clip_grad=True
    norm = float(raw.norm())
    assert norm > 2 * SPEC_MAX_GRAD_NORM  # the test means something: this step's gradient is over the limit
    assert float(clipped.norm()) == pytest.approx(SPEC_MAX_GRAD_NORM, rel=1e-4)
    torch.testing.assert_close(clipped, raw * (SPEC_MAX_GRAD_NORM / norm), rtol=1e-4, atol=1e-9)


def test_unsupervised_step_leaves_the_gradient_unclipped():
    raw = _grads_after_one_step("unsupervised", clip=False)
    assert float(raw.norm()) > 2 * SPEC_MAX_GRAD_NORM
    torch.testing.assert_close(_grads_after_one_step("unsupervised"), raw, rtol=0, atol=0)


def test_every_sample_of_an_epoch_gets_its_own_anomaly_seed(monkeypatch):
    """Sample i of an epoch (single process) sits at global position i: the positions keying the synthetic
    anomalies run 0..N-1 over the epoch's batches, with the run seed and the epoch index."""
    calls = []
    real = trainer.sample_seeds

    def spy(base, epoch, positions):
        calls.append((base, epoch, [int(p) for p in positions]))
        return real(base, epoch, positions)

    monkeypatch.setattr(trainer, "sample_seeds", spy)
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL, seed=5)
    opts = FitOptions(epochs=2, batch_size=2, progress=False, feature_cache="off")
    fit(make_model(SMALL), TensorDataset(5, SMALL, seed=3), resolved, opts, CPU, log=lambda _m: None)
    assert [positions for _, _, positions in calls] == [[0, 1], [2, 3], [4]] * 2
    assert [epoch for _, epoch, _ in calls] == [0, 0, 0, 1, 1, 1]
    assert {base for base, _, _ in calls} == {5}
    seeds = [real(base, epoch, positions) for base, epoch, positions in calls]
    assert len({s for batch in seeds for s in batch}) == 2 * 2 * 5  # 2 epochs x 5 samples x 2 copies, all distinct


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_regime_sets_the_spec_stop_grad_and_clipping(preset):
    for regime, (stop_grad, clip) in SPEC_REGIMES.items():
        resolved = resolve(get_preset(preset), regime)
        assert (resolved.model.stop_grad, resolved.train.clip_grad) == (stop_grad, clip), regime


@pytest.mark.parametrize("regime", list(SPEC_REGIMES))
def test_the_regime_decides_whether_the_cls_loss_reaches_the_seg_head(regime):
    resolved = resolve(get_preset("tiny"), regime, model=SMALL)
    model = make_model(resolved.model).train()
    forward = TrainForward(model, AnomalyGenerator(resolved.generator))
    l2, l3 = model.backbone(torch.randn(2, 3, *SMALL.image_size, generator=torch.Generator().manual_seed(0)))
    fh, fw = SMALL.feature_size
    _, score, _, label = forward(l2, l3, torch.zeros(2, 1, fh, fw), torch.zeros(2), sample_seeds(0, 0, range(2)))
    focal_loss(score, label).backward()  # the classification loss only
    seg_grad = sum(float(p.grad.abs().sum()) for p in model.seg_head.parameters() if p.grad is not None)
    stop_grad, _ = SPEC_REGIMES[regime]
    assert (seg_grad == 0.0) is stop_grad, seg_grad


def _no_synthetic(preset: str = "tiny"):
    base = get_preset(preset)
    return dataclasses.replace(base, train=dataclasses.replace(base.train, synthetic_with_masks=False))


@pytest.mark.parametrize("regime", list(REGIMES))
def test_synthetic_anomalies_are_dropped_only_where_masks_teach_the_seg_head(regime):
    """synthetic_with_masks=False turns the feature-noise anomalies off in the supervised and mixed regimes only:
    unsupervised and weak runs have nothing else to teach the seg head."""
    resolved = resolve(_no_synthetic(), regime, model=SMALL)
    assert resolved.generator.enabled == (regime in ("unsupervised", "weak"))
    assert resolve(get_preset("mvtec"), regime, model=SMALL).generator.enabled  # the authors' presets keep them


def _step_grads(resolved, batch_size: int = 4) -> tuple[torch.Tensor, int]:
    """(all parameter gradients after one real `train_step`, number of samples the heads saw)."""
    model = make_model(resolved.model, seed=0).train()
    data = TensorDataset(batch_size, SMALL, n_defect=2, seed=1)
    samples = default_collate([data[i] for i in range(len(data))])
    batch = prepare_batch(model, samples, resolved.mask_align_corners, CPU, amp=False)
    forward = TrainForward(model, AnomalyGenerator(resolved.generator))
    seen = []
    model.seg_head.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
    opts = FitOptions(epochs=1, batch_size=batch_size, progress=False)
    seeds = sample_seeds(resolved.train.seed, 0, range(batch_size))
    train_step(model, forward, build_optimizer(model, resolved.train), batch, seeds, resolved, opts, CPU, DistInfo())
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double(), seen[0]


def test_without_synthetic_anomalies_the_step_equals_the_duplicated_step_without_noise():
    """Skipping the duplicate is exact: the gradient of one step on B samples equals that of the authors' step on
    the 2B duplicated samples when no Perlin mask fires (threshold above the noise's range), and the heads see B."""
    off = resolve(_no_synthetic(), "supervised", model=SMALL)
    assert not off.generator.enabled
    silent = dataclasses.replace(off.generator, enabled=True, threshold=10.0)
    reference, seen_twice = _step_grads(dataclasses.replace(off, generator=silent))
    fast, seen_once = _step_grads(off)
    assert (seen_twice, seen_once) == (8, 4)
    assert float(reference.norm()) > 0.1
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-7)
