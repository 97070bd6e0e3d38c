"""Training throughput per stage, uncached and with the frozen-backbone feature cache, in the same run.

    python bench/train.py                                         # tiny and mvtec presets on CPU, a few minutes
    python bench/train.py --presets mvtec --device cuda --batch 32 --precision bf16

Each precision runs in the same process (default fp32, the reference, and bf16: autocast on CUDA, and on CPU where
bf16 is native, AMX or AVX512-BF16; the backbone stays fp32 on CPU) and the ratios are printed.

Stages of one training step (training/trainer.py), each timed on its own with the previous stage's outputs:
    backbone     images -> layer2/layer3 + targets at feature size (uncached path)
    cache        gather layer2/layer3 + targets of the batch from the feature cache (cached path)
    generator    Perlin masks + Gaussian noise for the 2B duplicated samples
    fwd+bwd      feature stage + adaptor, perturbation (precomputed noise), seg and cls heads, loss, backward
    optimizer    AdamW step (+ gradient clipping in the supervised regimes)
    step         a whole step: uncached (backbone + generator + fwd+bwd + optimizer) and cached
img/s = batch / median seconds. Random backbone weights (timing only), random images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import time_calls  # noqa: E402
from bench.harness import write_json  # noqa: E402
from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.config import get_preset  # noqa: E402
from pipeline.model import SuperSimpleNet  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.feature_cache import FeatureCache  # noqa: E402
from training.generator import AnomalyGenerator  # noqa: E402
from training.generator import sample_seeds  # noqa: E402
from training.losses import ssn_loss  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.optim import clip_gradients  # noqa: E402
from training.regimes import resolve  # noqa: E402
from training.step import TrainForward  # noqa: E402
from training.step import autocast  # noqa: E402
from training.step import cpu_has_native_bf16  # noqa: E402
from training.step import prepare_batch  # noqa: E402
from training.trainer import FitOptions  # noqa: E402
from training.trainer import train_step  # noqa: E402

STAGES = ("backbone", "cache", "generator", "fwd+bwd", "optimizer", "step uncached", "step cached")


class FixedNoise(AnomalyGenerator):
    """The generator with its masks and noise drawn once: times fwd+bwd without the generator's cost."""

    def __init__(self, config, stored):
        super().__init__(config)
        self.stored = stored

    def masks_and_noise(self, seeds, channels, size, device):
        return self.stored


def samples_for(config, batch: int, seed: int = 0) -> list[dict]:
    """`batch` random samples following the training sample contract (good images)."""
    g = torch.Generator().manual_seed(seed)
    h, w = config.image_size
    return [
        {
            "image": torch.randn(3, h, w, generator=g),
            "mask": torch.zeros(1, h, w),
            "label": torch.tensor(0.0),
            "is_segmented": torch.tensor(True),
            "loss_mask": torch.ones(1, h, w),
            "path": f"random://{i}",
            "index": i,
        }
        for i in range(batch)
    ]


def bench_preset(name: str, args, device: torch.device, precision: str) -> list[dict]:
    preset = get_preset(name)
    resolved = resolve(preset, args.supervision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone on purpose: timing only
        backbone = load_backbone(preset.model.backbone, "random")
    torch.manual_seed(0)
    model = SuperSimpleNet(resolved.model, backbone, impl=args.impl).to(device).train()
    batch = args.batch or (preset.train.batch_size if device.type == "cuda" else 2)
    amp = precision == "bf16"
    cpu_bf16 = amp and device.type == "cpu"
    samples = samples_for(resolved.model, batch)
    collated = torch.utils.data.default_collate(samples)
    cache = FeatureCache.build(model, samples, batch, device, resolved.mask_align_corners, amp=amp)
    prepared = prepare_batch(model, collated, resolved.mask_align_corners, device, amp)
    seeds = sample_seeds(0, 0, range(batch))
    generator = AnomalyGenerator(resolved.generator)
    fh, fw = resolved.model.feature_size
    stored = generator.masks_and_noise(seeds, resolved.model.feature_channels, (fh, fw), device)
    forward = TrainForward(model, generator)
    fixed = TrainForward(model, FixedNoise(resolved.generator, stored))
    optimizer = build_optimizer(model, resolved.train)
    b = prepared

    def fwd_bwd():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp, cpu_bf16):
            seg, score, mask, label = fixed(b.l2, b.l3, b.mask, b.label, seeds)
        ssn_loss(seg, score, mask, label).total.backward()

    def optimizer_step():
        clip_gradients(model, resolved.train.clip_grad)
        optimizer.step()

    opts = FitOptions(epochs=1, batch_size=batch, amp=amp, cpu_bf16=cpu_bf16)

    def step(get_batch):
        return lambda: train_step(model, forward, optimizer, get_batch(), seeds, resolved, opts, device, DistInfo())

    calls = {
        "backbone": lambda: prepare_batch(model, collated, resolved.mask_align_corners, device, amp),
        "cache": lambda: cache.batch(list(range(batch))),
        "generator": lambda: generator.masks_and_noise(seeds, resolved.model.feature_channels, (fh, fw), device),
        "fwd+bwd": fwd_bwd,
        "optimizer": optimizer_step,
        "step uncached": step(lambda: prepare_batch(model, collated, resolved.mask_align_corners, device, amp)),
        "step cached": step(lambda: cache.batch(list(range(batch)))),
    }
    fwd_bwd()  # gradients exist before the optimizer stage is timed
    rows = []
    for stage in STAGES:
        seconds = statistics.median(time_calls(calls[stage], device, args.warmup, args.repeats, inference=False))
        row = {"preset": name, "precision": precision, "batch": batch, "stage": stage, "median_ms": 1e3 * seconds}
        rows.append(row | {"images_per_s": batch / seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mvtec"], help=f"any of: {', '.join(PRESETS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's on CUDA, 2 on CPU)")
    parser.add_argument("--supervision", default="unsupervised", help="regime (sets clipping, overlap, ...)")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32", "bf16"], choices=["bf16", "fp32"], help="autocast of the step"
    )
    parser.add_argument("--impl", default="fast-cpu", choices=["reference", "fast-cpu"], help="fused-op formulation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per stage")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--json", default="bench/results/train.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = list(args.precision)
    if device.type == "cpu" and "bf16" in precisions and not cpu_has_native_bf16():
        print("bf16 skipped: this CPU has no native bf16 (AMX / AVX512-BF16); emulated bf16 is slower than fp32")
        precisions.remove("bf16")
    rows = [row for name in args.presets for p in precisions for row in bench_preset(name, args, device, p)]
    env = environment(device)
    print(f"training step stages, {args.device} ({env.get('gpu', env['cpu'])}, {env['torch_threads']} threads)")
    ms = {(r["preset"], r["precision"], r["stage"]): r["median_ms"] for r in rows}
    table = [[r["preset"], r["precision"], r["batch"], r["stage"], r["median_ms"], r["images_per_s"]] for r in rows]
    print_table(["preset", "precision", "batch", "stage", "median_ms", "img/s"], table)
    for preset in args.presets:
        for p in precisions:
            ratio = ms[preset, p, "step uncached"] / ms[preset, p, "step cached"]
            print(f"{preset} {p}: cached step is {ratio:.2f}x the uncached step")
        if len(precisions) == 2:
            for stage in ("fwd+bwd", "step uncached"):
                ratio = ms[preset, "fp32", stage] / ms[preset, "bf16", stage]
                print(f"{preset}: bf16 {stage} is {ratio:.2f}x fp32 (the reference)")
    payload = {"precisions": precisions, "supervision": args.supervision, "env": env, "results": rows}
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
