"""Feature-window training (training/windows.py): where the windows fall, that the heads see the features and
the targets of one and the same window, that inference never crops, and which regimes keep the window."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_model
from torch.utils.data import default_collate
from train_helpers import SMALL
from train_helpers import TensorDataset

from kernels import reference
from pipeline.config import get_preset
from training import trainer
from training.distributed import DistInfo
from training.generator import AnomalyGenerator
from training.generator import sample_seeds
from training.optim import build_optimizer
from training.regimes import REGIMES
from training.regimes import resolve
from training.step import TrainForward
from training.step import prepare_batch
from training.trainer import FitOptions
from training.trainer import train_step
from training.windows import crop_windows
from training.windows import window_offsets

CPU = torch.device("cpu")


def one_defect_cell(h: int, w: int, y: int, x: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, h, w)
    mask[0, 0, y, x] = 1
    return mask


@pytest.mark.parametrize("cell", [(0, 0), (5, 17), (19, 23), (12, 2)])
def test_a_defective_window_holds_its_defect_and_reaches_every_such_position(cell):
    h, w, n = 20, 24, 8
    y, x = cell
    offsets = {window_offsets(one_defect_cell(h, w, y, x), torch.ones(1), n, [s])[0] for s in range(3000)}
    # every n x n window inside the map that covers (y, x), from geometry alone
    expected = {
        (t, left) for t in range(h - n + 1) for left in range(w - n + 1) if t <= y < t + n and left <= x < left + n
    }
    assert offsets == expected


def test_a_good_window_can_fall_anywhere_on_the_map():
    h, w, n = 12, 16, 5
    empty = torch.zeros(1, 1, h, w)
    offsets = {window_offsets(empty, torch.zeros(1), n, [s])[0] for s in range(4000)}
    assert offsets == {(t, left) for t in range(h - n + 1) for left in range(w - n + 1)}


def test_each_sample_has_its_own_window_fixed_by_its_seed():
    mask = torch.zeros(4, 1, 32, 32)
    mask[2:, 0, 10:14, 20:26] = 1
    label = torch.tensor([0.0, 0.0, 1.0, 1.0])
    seeds = sample_seeds(7, 3, range(4))
    first = window_offsets(mask, label, 12, seeds)
    assert window_offsets(mask, label, 12, seeds) == first  # a pure function of the seeds
    assert len(set(first)) > 1  # not one window for the whole batch
    others = [window_offsets(mask, label, 12, sample_seeds(7, epoch, range(4))) for epoch in range(4, 12)]
    assert any(o != first for o in others)  # other epochs, other windows
    for offs in [first, *others]:
        crops = crop_windows(mask, offs, 12)
        assert crops.shape == (4, 1, 12, 12)
        assert crops[2:].flatten(1).amax(1).tolist() == [1.0, 1.0]


def test_a_defect_without_a_mask_pixel_is_refused():
    with pytest.raises(ValueError, match="no mask pixel"):
        window_offsets(torch.zeros(2, 1, 16, 16), torch.tensor([0.0, 1.0]), 8, [1, 2])
    with pytest.raises(ValueError, match="feature_window=20"):
        window_offsets(torch.zeros(1, 1, 16, 24), torch.zeros(1), 20, [1])


def test_crop_windows_slices_each_sample_at_its_own_offset():
    t = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    got = crop_windows(t, [(0, 4), (2, 1)], 3)
    assert torch.equal(got[0], t[0, :, 0:3, 4:7]) and torch.equal(got[1], t[1, :, 2:5, 1:4])
    assert crop_windows(None, [(0, 0)], 3) is None


def _one_step(resolved, model, batch) -> None:
    """One real `train_step` on `batch`, as the trainer runs it."""
    forward = TrainForward(model, AnomalyGenerator(resolved.generator))
    opts = FitOptions(epochs=1, batch_size=4, progress=False)
    seeds = sample_seeds(resolved.train.seed, 0, range(4))
    train_step(model, forward, build_optimizer(model, resolved.train), batch, seeds, resolved, opts, CPU, DistInfo())


def _windowed_run(window: int):
    resolved = resolve(get_preset("tiny"), "supervised", model=SMALL)  # 8 x 12 feature map
    resolved = dataclasses.replace(resolved, train=dataclasses.replace(resolved.train, feature_window=window))
    model = make_model(resolved.model, seed=0).train()
    data = TensorDataset(4, SMALL, n_defect=2, seed=1)
    batch = prepare_batch(model, default_collate([data[i] for i in range(4)]), resolved.mask_align_corners, CPU, False)
    return resolved, model, batch


def test_the_heads_train_on_the_features_and_targets_of_the_same_window(monkeypatch):
    resolved, model, batch = _windowed_run(window=4)
    with torch.no_grad():  # the whole map's adapted features, computed before any training step
        _, full = reference.feature_stage(
            batch.l2, batch.l3, model.adaptor.weight, model.adaptor.bias, model.config.align_corners, model.impl, False
        )
    seen, targets = {}, {}
    model.seg_head.register_forward_hook(lambda _m, inputs, _o: seen.update(adapted=inputs[0].detach()))

    def spy_loss(seg_map, score, mask, label, *rest):
        targets.update(mask=mask, label=label, seg=seg_map.shape)
        return real_loss(seg_map, score, mask, label, *rest)

    real_loss = trainer.ssn_loss
    monkeypatch.setattr(trainer, "ssn_loss", spy_loss)
    _one_step(resolved, model, batch)

    fh, fw = model.config.feature_size
    assert (fh, fw) == (8, 12) and targets["seg"] == (4, 1, 4, 4)
    for k in range(4):
        found = [
            (y, x)
            for y in range(fh - 3)
            for x in range(fw - 3)
            if torch.allclose(seen["adapted"][k], full[k, :, y : y + 4, x : x + 4], atol=1e-5)
        ]
        assert len(found) == 1, k  # the heads saw exactly one window of this sample's own features ...
        y, x = found[0]
        assert torch.equal(targets["mask"][k], batch.mask[k, :, y : y + 4, x : x + 4])  # ... and its targets
    assert targets["label"].tolist() == batch.label.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert targets["mask"][2:].flatten(1).amax(1).tolist() == [1.0, 1.0]  # defective windows hold the defect


def test_inference_sees_the_whole_map_after_windowed_training():
    resolved, model, batch = _windowed_run(window=4)
    _one_step(resolved, model, batch)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *SMALL.image_size))
    assert out.anomaly_map.shape[-2:] == SMALL.image_size


def test_a_window_as_large_as_the_map_trains_on_the_whole_map():
    resolved, model, batch = _windowed_run(window=8)  # the map is 8 x 12: no window fits inside smaller
    shapes = []
    model.seg_head.register_forward_hook(lambda _m, inputs, _o: shapes.append(tuple(inputs[0].shape)) and None)
    _one_step(resolved, model, batch)
    assert shapes == [(4, model.config.feature_channels, 8, 12)]


def test_only_the_regime_where_every_defect_is_masked_keeps_the_window():
    preset = get_preset("tiny")
    assert preset.train.feature_window > 0  # the CPU recipe uses it
    kept = {name: resolve(preset, name).train.feature_window for name in REGIMES}
    assert kept == {"supervised": preset.train.feature_window, "mixed": 0, "weak": 0, "unsupervised": 0}
    bad = dataclasses.replace(preset, train=dataclasses.replace(preset.train, feature_window=-1))
    with pytest.raises(ValueError, match="feature_window=-1"):
        resolve(bad, "supervised")
