"""training/conv1_choice.py: the oriented bank (a line across each Gabor's orientation, colour filters blind to
grey), the probe that ranks two conv1s on a training split (a visible defect ranks high, an invisible one at
chance), and the choice inside the random backbone's calibration (the training after it draws what it would
without it)."""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import torch

from pipeline.config import get_preset
from training.conv1_choice import orient_conv1
from training.conv1_choice import oriented_filters
from training.conv1_choice import probe_auroc
from training.conv1_choice import probe_reason
from training.model_init import build_model
from training.model_init import calibrate_if_random

SIZE = 64


def _line(angle: float, size: int = 7) -> torch.Tensor:
    """A 1-px bright line through the centre whose normal points at `angle` (pixels within 0.5 of it)."""
    r = torch.arange(size, dtype=torch.double) - size // 2
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    return ((xs * math.cos(angle) + ys * math.sin(angle)).abs() < 0.5).double()


def test_each_gabor_answers_most_to_a_line_across_its_own_orientation():
    """The 32 Gabors come as 2 wavelengths x 8 orientations (pi k / 8) x (even, odd): the even one of orientation
    k responds most to the line whose normal is at pi k / 8, the odd one (antisymmetric) responds to no centred
    line and most to one shifted a pixel along that normal; no Gabor sees flat grey, and all 34 luminance filters
    weigh R, G and B alike."""
    bank = oriented_filters(7)
    assert bank.shape == (39, 3, 7, 7)
    torch.testing.assert_close(bank.flatten(1).norm(dim=1), torch.ones(39, dtype=torch.double))
    lines = torch.stack([_line(math.pi * k / 8) for k in range(8)])  # [8, 7, 7]
    shifted = torch.stack([torch.roll(_line(0.0), 1, dims=1), torch.roll(_line(math.pi / 2), 1, dims=0)])
    for group in range(2):
        even = bank[16 * group : 16 * group + 16 : 2].sum(dim=1)  # [8, 7, 7]: the grey filters' spatial part
        odd = bank[16 * group + 1 : 16 * group + 16 : 2].sum(dim=1)
        responses = torch.einsum("fhw,lhw->fl", even, lines)  # [filter, line]
        assert torch.equal(responses.argmax(dim=1), torch.arange(8)), responses
        assert torch.einsum("fhw,lhw->fl", odd, lines).abs().max() < 1e-9
        side = torch.einsum("fhw,lhw->fl", odd[[0, 4]], shifted).diagonal().abs()
        assert bool((side > 0.1).all()), side
    flat = torch.ones(3, 7, 7, dtype=torch.double)
    assert torch.einsum("fchw,chw->f", bank[:32], flat).abs().max() < 1e-9
    channels = bank[:34]
    assert torch.equal(channels[:, 0], channels[:, 1]) and torch.equal(channels[:, 1], channels[:, 2])


def test_the_colour_filters_are_blind_to_grey_except_the_mean():
    bank = oriented_filters(7)[34:]  # [5, 3, 7, 7]
    grey = torch.ones(3, 7, 7, dtype=torch.double)
    sums = torch.einsum("fchw,chw->f", bank, grey)
    assert sums[0] > 0.5 and sums[1:].abs().max() < 1e-9
    blue = torch.zeros(3, 7, 7, dtype=torch.double)
    blue[2] = 1.0
    assert torch.einsum("fchw,chw->f", bank[1:], blue).abs().max() > 0.1  # (R+G)/2-B, G-B, R-B see blue


def test_orienting_conv1_replaces_the_first_filters_only_at_the_random_draws_norm():
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    model, _ = build_model(config, "random", seed=3)
    before = model.backbone.conv1.weight.detach().clone()
    assert orient_conv1(model.backbone.conv1) == 39
    after = model.backbone.conv1.weight
    assert torch.equal(after[39:], before[39:])
    norms = after[:39].flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, before.flatten(1).norm(dim=1).mean().expand(39), rtol=1e-5, atol=0)
    cosine = torch.nn.functional.cosine_similarity(after[:39].flatten(1).double(), oriented_filters(7).flatten(1))
    torch.testing.assert_close(cosine, torch.ones(39, dtype=torch.double), rtol=0, atol=1e-6)


class SquareLine:
    """A small training split in memory: grey noise, good images and labelled defective ones whose mask is a 12x12
    square; `visible` draws the square (bright), otherwise only the mask says it is there."""

    def __init__(self, visible: bool, good: int = 8, bad: int = 8, masks: bool = True):
        rng = np.random.default_rng(5)
        self.labels = np.array([0] * good + [1] * bad)
        self.records = [types.SimpleNamespace(mask="mask" if (y and masks) else None) for y in self.labels]
        self.samples = []
        for y in self.labels:
            image = torch.from_numpy(rng.normal(0.0, 0.3, (3, SIZE, SIZE))).float()
            mask = torch.zeros(1, SIZE, SIZE)
            if y:
                top, left = rng.integers(0, SIZE - 11, size=2)
                mask[:, top : top + 12, left : left + 12] = 1.0
                if visible:
                    image[:, top : top + 12, left : left + 12] += 2.5
            self.samples.append({"image": image, "mask": mask, "label": torch.tensor(int(y))})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def _model(seed: int = 3):
    config = dataclasses.replace(get_preset("tiny").model, image_size=(SIZE, SIZE))
    return build_model(config, "random", seed=seed)


def test_the_probe_ranks_a_visible_defect_high_and_an_invisible_one_at_chance():
    model, source = _model()
    calibrate_if_random(model, source, SquareLine(True), 4, torch.device("cpu"), lambda _m: None, 0.1)
    assert probe_auroc(model, SquareLine(visible=True)) > 0.9
    assert 0.35 < probe_auroc(model, SquareLine(visible=False)) < 0.7  # 0.80 if a half is scored against itself


def test_a_split_without_two_masked_defects_keeps_the_drawn_conv1_and_says_why():
    assert probe_reason(SquareLine(True)) is None
    assert "labelled defective" in probe_reason(SquareLine(True, masks=False))
    assert "good" in probe_reason(SquareLine(True, good=1))
    model, source = _model()
    plain, plain_source = _model()
    said = []
    line = SquareLine(True, masks=False)
    chosen = calibrate_if_random(model, source, line, 4, torch.device("cpu"), said.append, 0.1, True)
    assert chosen == calibrate_if_random(plain, plain_source, line, 4, torch.device("cpu"), lambda _m: None, 0.1)
    assert any("not chosen" in line for line in said)
    assert torch.equal(model.backbone.conv1.weight, plain.backbone.conv1.weight)


def test_the_choice_keeps_one_of_the_two_calibrated_candidates_and_leaves_the_global_rng_as_it_was():
    line = SquareLine(True)
    model, source = _model()
    torch.manual_seed(11)
    chosen = calibrate_if_random(model, source, line, 4, torch.device("cpu"), lambda _m: None, 0.1, True)
    after_choice = torch.random.get_rng_state()
    drawn, drawn_source = _model()
    torch.manual_seed(11)
    calibrate_if_random(drawn, drawn_source, line, 4, torch.device("cpu"), lambda _m: None, 0.1)
    assert torch.equal(after_choice, torch.random.get_rng_state())  # the training after it draws the same
    oriented, oriented_source = _model()
    orient_conv1(oriented.backbone.conv1)
    calibrate_if_random(oriented, oriented_source, line, 4, torch.device("cpu"), lambda _m: None, 0.1)
    scores = [float(v) for v in chosen.split("conv1-choice(drawn ")[1].rstrip(")").split(", oriented ")]
    want = oriented if scores[1] > scores[0] else drawn
    assert chosen.startswith(
        "random(seed=3)+oriented-conv1(39)+colour" if want is oriented else "random(seed=3)+colour"
    )
    mine = model.state_dict()
    for key, value in want.state_dict().items():
        assert torch.equal(mine[key], value), key
    assert scores == [round(100 * probe_auroc(m, line), 1) for m in (drawn, oriented)]
