"""Time and peak memory of the evaluation metrics on a full-category-sized synthetic test set.

    python bench/metrics.py                    # 150 x 256 x 256, ~200 regions (a large MVTec category)
    python bench/metrics.py --images 40 --size 128 --regions 60

Rows: split (8-connected labelling + one sort of the defect-free scores), pixel P-AUROC + AP-loc (lossless weighted
samples into scikit-learn), AUPRO, the whole `compute_metrics`, `f1_thresholds`, and scikit-learn on all pixels
(the straightforward way) for comparison. Peak memory is tracemalloc's peak of numpy/python allocations during the
step, over the inputs. The oracle rows time the literal anomalib-0.7 transcription of tests/test_metrics.py (one ROC
over all defect-free pixels per region) against ours on a reduced set, with the difference of the two values.
Timings are never asserted; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import print_table  # noqa: E402
from bench.harness import write_json  # noqa: E402
from training.aupro import aupro_of  # noqa: E402
from training.aupro import label_regions  # noqa: E402
from training.aupro import split_pixels  # noqa: E402
from training.metrics import compute_metrics  # noqa: E402
from training.metrics import f1_thresholds  # noqa: E402
from training.metrics import weighted_pixel_samples  # noqa: E402


def synthetic_test_set(images: int, size: int, regions: int, seed: int = 0):
    """Disc defects in the first 2/3 of the images; smooth probability maps that partly see them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(regions):
        i = rng.integers(0, max(1, 2 * images // 3))
        cy, cx = rng.integers(size // 10, size - size // 10, 2)
        radius = rng.integers(max(2, size // 80), max(3, size // 12))
        masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    noise = ndimage.gaussian_filter(rng.random(masks.shape, dtype=np.float32), (0, 3, 3))
    maps = 1 / (1 + np.exp(-((noise - 0.5) * 20 + masks * 1.5)))
    labels = masks.reshape(images, -1).any(axis=1)
    scores = rng.random(images) * 0.6 + labels * 0.3
    return scores.astype(np.float32), labels, maps.astype(np.float32), masks


def measure(fn):
    """(result, seconds, peak MiB of new allocations)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def pixel_steps(maps: np.ndarray, masks: np.ndarray) -> tuple[list[list], float]:
    """The pixel-level parts one by one: rows [step, seconds, peak MiB] and the AUPRO value."""
    pixels, *split = measure(lambda: split_pixels(maps, masks))
    samples = measure(lambda: weighted_pixel_samples(pixels.background, pixels.defect))[1:]
    (value, _), *timing = measure(lambda: aupro_of(pixels))
    return [["split (labels + sort)", *split], ["P-AUROC + AP-loc samples", *samples], ["AUPRO", *timing]], value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=150, help="test images")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--regions", type=int, default=200, help="defect discs placed (overlaps merge)")
    parser.add_argument("--oracle-images", type=int, default=12, help="images of the reduced set for the oracle")
    parser.add_argument("--no-oracle", action="store_true", help="skip the literal anomalib comparison")
    parser.add_argument("--json", default="bench/results/metrics.json", help="where to write the JSON results")
    args = parser.parse_args(argv)

    scores, labels, maps, masks = synthetic_test_set(args.images, args.size, args.regions)
    inputs_mib = (maps.nbytes + masks.nbytes) / 2**20
    rows, aupro_value = pixel_steps(maps, masks)
    metrics, *timing = measure(lambda: compute_metrics(scores, labels, maps, masks))
    rows.append(["compute_metrics (all 7)", *timing])
    rows.append(["f1_thresholds", *measure(lambda: f1_thresholds(scores, labels, maps, masks))[1:]])
    from sklearn.metrics import roc_auc_score

    rows.append(["sklearn P-AUROC, all pixels", *measure(lambda: roc_auc_score(masks.ravel(), maps.ravel()))[1:]])

    results = {
        "shape": list(maps.shape),
        "regions": label_regions(masks)[1],
        "defect_pixels": int(masks.sum()),
        "inputs_mib": inputs_mib,
        "metrics": {k: v for k, v in metrics.items() if k != "undefined"},
        "steps": [{"step": r[0], "seconds": r[1], "peak_mib": r[2]} for r in rows],
    }
    print(
        f"{args.images} x {args.size} x {args.size}, {results['regions']} regions, "
        f"{results['defect_pixels']} defect pixels; inputs {inputs_mib:.0f} MiB"
    )
    print_table(["step", "seconds", "peak MiB"], rows)
    print(f"AUPRO {aupro_value:.6f}; " + ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items()))

    if not args.no_oracle:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_metrics import anomalib_aupro

        _, _, small_maps, small_masks = synthetic_test_set(args.oracle_images, 128, 4 * args.oracle_images, seed=1)
        (ours, _), ours_s, _ = measure(lambda: aupro_of(split_pixels(small_maps, small_masks)))
        oracle, oracle_s, _ = measure(lambda: anomalib_aupro(small_maps, small_masks))
        results["oracle"] = {
            "shape": list(small_maps.shape),
            "ours": ours,
            "anomalib_literal": oracle,
            "ours_s": ours_s,
            "anomalib_literal_s": oracle_s,
        }
        print(
            f"oracle on {args.oracle_images}x128x128: ours {ours:.7f} in {ours_s:.2f} s, literal anomalib "
            f"{oracle:.7f} in {oracle_s:.2f} s ({oracle_s / ours_s:.0f}x), |diff| {abs(ours - oracle):.1e}"
        )
    print(f"json: {write_json(args.json, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
