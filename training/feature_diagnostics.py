"""Can the synthetic anomalies be seen in this backbone's features? A diagnostic for a trained checkpoint.

    python -m training.feature_diagnostics --checkpoint ck.safetensors --synthetic
    python -m training.feature_diagnostics --checkpoint bottle.safetensors --data /data/mvtec --category bottle

SuperSimpleNet learns to find N(0, sigma^2) noise added to the adapted features (spec §2.1, sigma 0.015 for ImageNet
features). On one feature vector, the best possible noise detector is the Mahalanobis energy: the noise adds
sum_i sigma^2 / lambda_i to it (lambda_i: eigenvalues of the normal features' covariance), against a spread of
sqrt(2 C) for C channels. This prints that separation for a few sigmas, the spectrum, and, on the test split, the
checkpoint's metrics beside a training-free Mahalanobis baseline on the same pooled features: when the baseline
localizes defects but the separation at the trained sigma is far below 1, the heads had nothing to learn from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SIGMAS = (0.015, 0.05, 0.1, 0.3)


def pooled_features(model, dataset, batch_size: int = 16) -> torch.Tensor:
    """[N, C, fh, fw] pooled features of every image of `dataset`, in index order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([model.features(batch["image"]).pooled for batch in loader])


def spectrum(train_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [C], inverse covariance [C, C], eigenvalues [C]) of the feature vectors, in float64."""
    x = train_feats.permute(0, 2, 3, 1).reshape(-1, train_feats.shape[1]).double()
    cov = torch.cov(x.T)
    eig = torch.linalg.eigvalsh(cov)
    ridge = 1e-6 * float(eig[-1])  # keeps a rank-deficient covariance invertible
    return x.mean(0), torch.linalg.inv(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype)), eig


def separation(eig: torch.Tensor, sigma: float) -> float:
    """Mean Mahalanobis energy that N(0, sigma^2 I) adds, in standard deviations of the noise-free energy."""
    return float((sigma**2 / eig.clamp(min=1e-12)).sum() / (2 * eig.numel()) ** 0.5)


def mahalanobis_maps(feats: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor, size) -> torch.Tensor:
    """[N, 1, H, W] squared Mahalanobis distance per feature position, bilinearly resized to the image size."""
    centred = feats.permute(0, 2, 3, 1).double() - mean
    energy = torch.einsum("nhwc,cd,nhwd->nhw", centred, inv_cov, centred).float()[:, None]
    return torch.nn.functional.interpolate(energy, size=tuple(size), mode="bilinear", align_corners=False)


def diagnose(model, train, test) -> dict:
    from training.evaluate import collect
    from training.evaluate import inference_module
    from training.metrics import compute_metrics

    mean, inv_cov, eig = spectrum(pooled_features(model, train))
    maps = mahalanobis_maps(pooled_features(model, test), mean, inv_cov, model.config.image_size)
    trained = collect(inference_module(model), test, 16, torch.device("cpu"))
    baseline = compute_metrics(maps.amax(dim=(1, 2, 3)).numpy(), trained.labels, maps[:, 0].numpy(), trained.masks)
    metrics = compute_metrics(trained.scores, trained.labels, trained.maps, trained.masks)
    keep = ("I-AUROC", "P-AUROC", "AUPRO")
    return {
        "channels": int(eig.numel()),
        "eigenvalues": {"min": float(eig[0]), "median": float(eig.median()), "max": float(eig[-1])},
        "separation": {str(s): round(separation(eig, s), 3) for s in SIGMAS},
        "checkpoint": {k: round(float(metrics[k]), 4) for k in keep},
        "mahalanobis_baseline": {k: round(float(baseline[k]), 4) for k in keep},
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.checkpoint import load_checkpoint
    from training.cli import add_data_flags
    from training.cli import dataset_name
    from training.cli import parse_options
    from training.data.base import build_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors checkpoint of this project")
    add_data_flags(parser)
    args = parser.parse_args(argv)
    model, _ = load_checkpoint(args.checkpoint, impl="fast-cpu")
    model.eval()
    name, options = dataset_name(args, ""), parse_options(args.data_option)
    train = build_dataset(name, args.data, "train", model.config, args.category, good_only=True, **options)
    test = build_dataset(name, args.data, "test", model.config, args.category, **options)
    print(json.dumps(diagnose(model, train, test), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
