"""training/model_init.py: the synthetic demo's fallback to a random backbone builds the very model that
`--backbone-weights random` builds (the failed pretrained attempt must not shift the seeded init)."""

from __future__ import annotations

import dataclasses

import torch

from pipeline.backbone import torchvision_weights
from pipeline.config import PRESETS
from pipeline.config import get_preset
from training.model_init import build_model
from training.model_init import calibrate_colour
from training.model_init import calibrate_if_random
from training.model_init import colour_gains
from training.model_init import start_score_at_map_max


def test_fallback_to_random_equals_explicit_random(tmp_path, monkeypatch):
    # a corrupt file in the hub cache: the torchvision weights API fails its hash check, online or not
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / torchvision_weights("resnet18", "IMAGENET1K_V1").url.rsplit("/", 1)[-1]).write_bytes(b"not weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    said = []
    fallback, source = build_model(config, None, seed=7, allow_random_fallback=True, log=said.append)
    explicit, explicit_source = build_model(config, "random", seed=7)
    assert source == explicit_source == "random(seed=7)" and "RANDOM resnet18 backbone" in said[0]
    want = explicit.state_dict()
    for key, value in fallback.state_dict().items():
        assert torch.equal(value, want[key]), key


def test_colour_gains_on_a_known_covariance():
    """Eigenvalues 100, 1, 0.01 in a rotated basis, floor 0.1 (e = 10): gains sqrt(110/110), sqrt(110/11),
    sqrt(110/10.01); the rescaled covariance M S M^T then has eigenvalues 100, 10 and 0.11 (worked by hand)."""
    basis, _ = torch.linalg.qr(torch.tensor([[1.0, 0.3, -0.2], [0.5, 1.0, 0.1], [0.2, -0.4, 1.0]], dtype=torch.float64))
    cov = basis @ torch.diag(torch.tensor([0.01, 1.0, 100.0], dtype=torch.float64)) @ basis.T
    matrix, gains = colour_gains(cov, 0.1)
    torch.testing.assert_close(gains, torch.tensor([(110 / 10.01) ** 0.5, 10**0.5, 1.0], dtype=torch.float64))
    rescaled = torch.linalg.eigvalsh(matrix @ cov @ matrix.T)
    torch.testing.assert_close(rescaled, torch.tensor([0.01 * 110 / 10.01, 10.0, 100.0], dtype=torch.float64))


def test_colour_calibration_folds_the_rescaling_into_conv1_exactly():
    """conv1 after calibration on images X equals the original conv1 applied to M x, pixel by pixel, where M is
    built from X's colour covariance (torch.cov here, not the code's own statistics path)."""
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    model, _ = build_model(config, "random", seed=3)
    g = torch.Generator().manual_seed(0)
    grey = torch.randn(4, 1, 32, 32, generator=g)
    images = grey.expand(4, 3, 32, 32) + 0.05 * torch.randn(4, 3, 32, 32, generator=g)  # mostly luminance
    before = model.backbone.conv1.weight.detach().clone()
    gains = calibrate_colour(model.backbone, [images[:2], images[2:]], 0.1, torch.device("cpu"))
    matrix, want = colour_gains(torch.cov(images.permute(1, 0, 2, 3).reshape(3, -1).double()), 0.1)
    torch.testing.assert_close(gains, want)
    assert float(gains.max()) > 2.5  # the colour directions of a grey surface are amplified
    probe = torch.randn(2, 3, 32, 32, generator=g).double()
    mixed = torch.einsum("kc,bchw->bkhw", matrix, probe)
    expected = torch.nn.functional.conv2d(mixed, before.double(), stride=2, padding=3)
    got = torch.nn.functional.conv2d(probe, model.backbone.conv1.weight.double(), stride=2, padding=3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_a_random_backbone_is_colour_calibrated_and_the_source_says_so():
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    data = [{"image": torch.randn(3, 32, 32), "label": 0} for _ in range(4)]
    model, source = build_model(config, "random", seed=3)
    before = model.backbone.conv1.weight.detach().clone()
    source = calibrate_if_random(model, source, data, 2, torch.device("cpu"), lambda _m: None, colour_floor=0.1)
    assert source == "random(seed=3)+colour(floor=0.1)+bn-calibrated(4 images)"
    assert not torch.equal(model.backbone.conv1.weight, before)
    plain, plain_source = build_model(config, "random", seed=3)
    assert calibrate_if_random(plain, plain_source, data, 2, torch.device("cpu"), lambda _m: None).endswith(
        "+bn-calibrated(4 images)"
    ) and torch.equal(plain.backbone.conv1.weight, before)  # colour_floor 0: conv1 untouched


def test_the_score_init_makes_the_image_score_exactly_the_maps_max():
    """The fc starts as 2 x the map-max term (spec §1.3): no conv pool, no map mean and no bias in the score, and
    nothing else in the model moves off its draw nor is the RNG advanced (the data order stays the default's)."""
    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 32))
    drawn, _ = build_model(config, "random", seed=5)
    model, _ = build_model(config, "random", seed=5)
    rng = torch.random.get_rng_state()
    start_score_at_map_max(model, 2.0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, config.feature_channels, 8, 8, generator=g)
    seg_map = torch.randn(3, 1, 8, 8, generator=g)
    with torch.no_grad():
        score = model.cls_head.eval()(features, seg_map)
    torch.testing.assert_close(score, 2.0 * seg_map.flatten(1).max(dim=1).values)
    moved = {name for name, p in model.state_dict().items() if not torch.equal(p, drawn.state_dict()[name])}
    assert moved == {"cls_head.fc.weight", "cls_head.fc.bias"}


def test_the_paper_presets_keep_the_xavier_draw_of_the_score():
    """Only the embedded CPU default starts its score at the map's max; the paper's recipes stay as they are."""
    assert {name for name, p in PRESETS.items() if p.train.score_map_max_init} == {"tiny"}
    config = dataclasses.replace(get_preset("mvtec").model, image_size=(32, 32))
    drawn, _ = build_model(config, "random", seed=5)
    model, _ = build_model(config, "random", seed=5)
    start_score_at_map_max(model, get_preset("mvtec").train.score_map_max_init)
    assert torch.equal(model.cls_head.fc.weight, drawn.cls_head.fc.weight)
