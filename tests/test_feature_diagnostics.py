"""training/feature_diagnostics.py: the noise-separation figure and the Mahalanobis baseline on hand cases."""

from __future__ import annotations

import torch

from training.feature_diagnostics import mahalanobis_maps
from training.feature_diagnostics import separation
from training.feature_diagnostics import spectrum


def test_separation_on_a_known_spectrum():
    # C = 8 unit eigenvalues: sigma 1 adds energy 8 against a spread sqrt(16) = 4 -> 2 standard deviations
    assert abs(separation(torch.ones(8, dtype=torch.float64), 1.0) - 2.0) < 1e-12
    # halving the smallest eigenvalue's variance doubles its share
    eig = torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert abs(separation(eig, 1.0) - (2 + 3) / 8**0.5) < 1e-12


def test_mahalanobis_distance_is_in_units_of_each_directions_spread():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 0.5])  # two independent channels with std 3 and 0.5
    feats = (torch.randn(4000, 2, generator=g) * scales).T.reshape(1, 2, 4000, 1)
    mean, inv_cov, eig = spectrum(feats)
    assert torch.allclose(eig.sqrt().sort().values, scales.double().sort().values, rtol=0.05)
    probe = torch.zeros(1, 2, 1, 2)
    probe[0, :, 0, 0] = mean.float() + torch.tensor([3.0, 0.0])  # one std along the wide channel
    probe[0, :, 0, 1] = mean.float() + torch.tensor([0.0, 0.5])  # one std along the narrow channel
    energy = mahalanobis_maps(probe, mean, inv_cov, (1, 2))
    assert torch.allclose(energy.flatten(), torch.ones(2), rtol=0.05)


def test_diagnose_runs_on_a_dataset(tmp_path):
    import dataclasses

    from datafakes import mvtec

    from pipeline.config import get_preset
    from training.data.base import build_dataset
    from training.feature_diagnostics import diagnose
    from training.model_init import build_model

    config = dataclasses.replace(get_preset("tiny").model, image_size=(32, 48))
    model, _ = build_model(config, "random", seed=0)
    root = tmp_path / "data"
    mvtec(root)
    train = build_dataset("mvtec", root, "train", config, "bottle", good_only=True)
    test = build_dataset("mvtec", root, "test", config, "bottle")
    result = diagnose(model.eval(), train, test)
    separations = list(result["separation"].values())
    assert result["channels"] == 384 and separations == sorted(separations) and separations[0] > 0
    for metrics in (result["checkpoint"], result["mahalanobis_baseline"]):
        assert set(metrics) == {"I-AUROC", "P-AUROC", "AUPRO"} and all(0 <= v <= 1 for v in metrics.values())
