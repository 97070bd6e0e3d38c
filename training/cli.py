"""`ssn train`: train a preset on a dataset in one supervision regime, evaluate, store alarm thresholds.

    ssn train --preset tiny --synthetic --out ck.safetensors             # the embedded default (CPU, minutes)
    ssn train --preset mvtec --data /data/mvtec --category bottle --out bottle.safetensors
    ssn train --preset ksdd2 --data /data/KolektorSDD2 --supervision mixed --data-option num_segmented=53 --out k.st
    torchrun --nproc-per-node 8 -m pipeline.cli train --preset mvtec --device cuda ...    # data parallel

After training (rank 0 only): F1-optimal thresholds on a validation split go into the checkpoint, the paper's
metrics on the test split go to `<out>.report/` (metrics.json, report.md, overlays).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RANDOM_UNSUPERVISED = (
    "unsupervised training on a RANDOM backbone: its anomaly maps come out inverted on some seeds (README "
    "'Training and evaluation': AUPRO 4-85 over four seeds). For a dependable model give labelled defects with "
    "masks (the supervised regime; folder layout: train/defect + train/masks) or ImageNet weights "
    "(--backbone-weights IMAGENET1K_V1 or a weights file), and read the report's warnings."
)
# preset -> the dataset layout it is tuned for (used when --dataset is not given)
PRESET_DATASETS = {"mvtec": "mvtec", "visa": "visa", "ksdd2": "ksdd2", "sensum": "sensum", "sensum_softgel": "sensum"}


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="dataset root folder (with --synthetic: where to generate it)")
    parser.add_argument(
        "--dataset",
        help="layout: mvtec, visa, ksdd2, sensum, folder, synthetic (default: the preset's dataset)",
    )
    parser.add_argument("--category", help="category inside the dataset (e.g. bottle; sensum: capsule/softgel)")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="use the synthetic defect dataset, generated on first use (into --data or ~/.cache/supersimplenet)",
    )
    parser.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="layout option, e.g. num_segmented=53 (ksdd2), fold=1 or ratio=0.2 (sensum), seed=3 (synthetic)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: this process's GPU)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--val-fraction", type=float, default=0.5, help="test-split share used for validation")


def configure_train(parser: argparse.ArgumentParser) -> None:
    from pipeline.config import PRESETS
    from training.regimes import REGIMES
    from training.trainer import CACHE_MODES

    parser.add_argument("--preset", default="mvtec", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--out", type=Path, required=True, help="final checkpoint file (.safetensors)")
    add_data_flags(parser)
    parser.add_argument(
        "--supervision",
        choices=list(REGIMES),
        help="regime with the authors' settings (default: from the training split: every defect masked -> "
        "supervised, some -> mixed, none -> weak, only good images -> unsupervised)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ModelConfig field")
    parser.add_argument("--epochs", type=int, help="epochs (default: the preset's; the paper uses 300)")
    parser.add_argument("--batch-size", type=int, help="per-process batch size (default: the preset's)")
    parser.add_argument("--seed", type=int, help="run seed (default: the regime's, 42 or 456654)")
    parser.add_argument(
        "--backbone-weights",
        help="IMAGENET1K_V1 (default), a local weights file, or 'random' (BN-calibrated on the training images)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="autocast of the training step; auto: bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), "
        "else fp32",
    )
    parser.add_argument("--feature-cache", choices=list(CACHE_MODES), default="auto", help="frozen-backbone cache")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="epochs between resumable checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the newest pair in <out>.ckpts/")
    parser.add_argument("--stop-after", type=int, help="stop after this many epochs of this run (resume later)")
    parser.add_argument("--no-eval", action="store_true", help="skip evaluation and thresholds")
    parser.add_argument("--report", type=Path, help="report folder (default: <out>.report)")
    parser.add_argument("--impl", default="fast-cpu", choices=["reference", "fast-cpu"], help="fused-op formulation")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_gate_flag(parser)


def add_gate_flag(parser: argparse.ArgumentParser) -> None:
    from training.evaluate import EXIT_BELOW
    from training.evaluate import parse_gate

    parser.add_argument(
        "--fail-below",
        action="append",
        default=[],
        type=parse_gate,
        metavar="METRIC=VALUE",
        help=f"exit with status {EXIT_BELOW} when a test-split metric is below VALUE (0.9 or 90%%), e.g. AUPRO=0.85",
    )


def parse_options(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict; values parsed as JSON when they can be (numbers, lists), else strings."""
    from pipeline.config import parse_value

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data-option {item!r}: expected KEY=VALUE")
        options[key] = parse_value(raw)
    return options


def dataset_name(args, preset_name: str) -> str:
    if args.synthetic:
        if args.dataset not in (None, "synthetic"):
            raise ValueError(f"--synthetic conflicts with --dataset {args.dataset}")
        return "synthetic"
    name = args.dataset or PRESET_DATASETS.get(preset_name)
    if name is None:
        raise ValueError(f"preset {preset_name!r} has no default dataset: pass --dataset NAME or --synthetic")
    if args.data is None:
        raise ValueError(f"dataset {name!r} needs --data ROOT (or use --synthetic)")
    return name


def without_defect_masks(dataset):
    """Weak supervision: every defective image keeps label 1 but its mask is not used (is_segmented False)."""
    from dataclasses import replace

    from training.data.base import DefectDataset

    records = [replace(r, mask=None) if r.label else r for r in dataset.records]
    return DefectDataset(
        records, dataset.config, dataset.split, source=dataset.source, check_files=False, **dataset.options
    )


def choose_regime(args, name: str, model, data_options: dict, log) -> str:
    """--supervision, else the regime the training split's content calls for; printed with how to change it."""
    from training.data.base import build_dataset
    from training.regimes import REGIMES
    from training.regimes import regime_for_split

    if args.supervision:
        log(f"supervision: {args.supervision} (--supervision)")
        return args.supervision
    probe = build_dataset(name, args.data, "train", model, args.category, **data_options)
    labels = probe.labels
    masked = sum(r.mask is not None for r in probe.records if r.label)
    regime, why = regime_for_split(int((labels == 0).sum()), int(labels.sum()), masked)
    others = "|".join(r for r in REGIMES if r != regime)
    log(f"supervision: {regime}, from the training split ({why}); to change it: --supervision {others}")
    return regime


def warn(message: str) -> None:
    import sys

    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def training_set(name: str, args, resolved, data_options: dict, log):
    from training.data.base import build_dataset
    from training.regimes import WEAK_THRESHOLD
    from training.regimes import with_threshold

    options = {**resolved.dataset_options, **data_options}
    train = build_dataset(name, args.data, "train", resolved.model, args.category, **options)
    if not resolved.regime.masks_used:
        train = without_defect_masks(train) if resolved.regime.uses_defects else train
    elif resolved.regime.name == "mixed" and not any(r.mask is not None for r in train.records if r.label):
        resolved = with_threshold(resolved, WEAK_THRESHOLD)  # the authors' rule: ratio 0 -> perlin_thr 0.2
    log(train.describe())
    return train, resolved


def run_train(args) -> int:
    import torch

    from pipeline.backbone import RANDOM
    from pipeline.config import get_preset
    from pipeline.config import override
    from training import distributed
    from training import evaluate
    from training.model_init import build_model
    from training.model_init import calibrate_if_random
    from training.model_init import start_score_at_map_max
    from training.regimes import resolve
    from training.step import cpu_bf16_for
    from training.trainer import FitOptions
    from training.trainer import fit
    from training.windows import windows_apply

    start = time.perf_counter()
    if args.fail_below and args.no_eval:
        raise ValueError("--fail-below needs the evaluation: drop --no-eval")
    preset = get_preset(args.preset)
    model_config = override(preset.model, args.set)
    name = dataset_name(args, preset.name)
    data_options = parse_options(args.data_option)
    info = distributed.init_distributed(torch.device(args.device))
    device = distributed.process_device(args.device, info)
    log = print if info.is_main else (lambda _m: None)
    regime = choose_regime(args, name, model_config, data_options, log)
    resolved = resolve(preset, regime, model_config, args.seed)

    train, resolved = training_set(name, args, resolved, data_options, log)
    batch = args.batch_size or resolved.train.batch_size
    model, source = build_model(
        resolved.model, args.backbone_weights, resolved.train.seed, args.impl, name == "synthetic", log
    )
    init = resolved.train.score_map_max_init
    start_score_at_map_max(model, init)
    source = calibrate_if_random(
        model, source, train, batch, device, log, resolved.train.colour_floor, resolved.train.choose_conv1
    )
    if source.startswith(RANDOM) and regime == "unsupervised" and info.is_main:
        warn(RANDOM_UNSUPERVISED)
    epochs = args.epochs or resolved.train.epochs
    opts = FitOptions(
        epochs=epochs,
        batch_size=batch,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_after=args.stop_after,
        feature_cache=args.feature_cache,
        num_workers=args.workers,
        amp=args.precision != "fp32",
        cpu_bf16=cpu_bf16_for(args.precision),
        progress=not args.quiet,
        backbone_source=source,
    )
    anomalies = (
        f"perlin_thr {resolved.train.perlin_threshold}"
        if resolved.generator.enabled
        else "masks only (no feature-noise anomalies)"
    )
    window, (fh, fw) = resolved.train.feature_window, resolved.model.feature_size
    windows = (
        f", heads on {window}x{window} windows of the {fh}x{fw} feature map" if windows_apply(window, (fh, fw)) else ""
    )
    score = f", score starts as {init:g} x the map's max" if init else ""
    log(
        f"training {preset.name} ({regime}, {'ICPR' if resolved.model.adapt_cls_features else 'JIMS'} head) on "
        f"{name}{'/' + args.category if args.category else ''}: {epochs} epochs, batch {batch} x {info.world_size} "
        f"process(es), {device} {opts.step_precision(device)}, "
        f"seed {resolved.train.seed}, {anomalies}{score}{windows}"
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = fit(model, train, resolved, opts, device, info, log)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    distributed.shutdown(info)
    if not info.is_main:
        return 0
    finished = len(result.history) and result.history[-1]["epoch"] == epochs
    if not finished:
        log(f"stopped after epoch {result.history[-1]['epoch'] if result.history else 0}; resume with --resume")
        return 0
    log(f"trained in {train_seconds:.1f} s, CPU {train_cpu:.1f} s (feature cache: {result.cache})")

    thresholds, code = None, 0
    if not args.no_eval:
        module = evaluate.inference_module(model)
        val, test, val_source = evaluate.validation_and_test(
            name, args.data, resolved.model, args.category, data_options, args.val_fraction
        )
        thresholds = evaluate.choose_thresholds(evaluate.collect(module, val, batch, device), val_source)
        report_dir = args.report or args.out.with_name(args.out.name + ".report")
        extra = {
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu,
            "epochs": epochs,
            "batch_size": batch,
            "precision": opts.step_precision(device),
            "preset": preset.name,
            "backbone": source,
            "train_config": repr(resolved.train),
        }
        collected = evaluate.collect(module, test, batch, device)
        outcome = evaluate.report(collected, report_dir, name, args.category, regime, thresholds, extra)
        log(f"test split ({len(test)} images): {evaluate.format_metrics(outcome)}")
        log(f"thresholds: image {thresholds.get('image')}, pixel {thresholds.get('pixel')} ({val_source})")
        log(f"report: {report_dir}/report.md")
        code = evaluate.announce(outcome, args.fail_below)
        model.map_sigmoid = False  # the checkpoint stores weights; serving chooses its output form

    from pipeline.checkpoint import save_checkpoint

    save_checkpoint(model, args.out, source, thresholds=thresholds)  # write, then rename
    log(f"checkpoint: {args.out} ({time.perf_counter() - start:.1f} s in total)")
    if code:
        log(f"ssn train: the checkpoint did not pass --fail-below (exit status {code}): do not deploy it")
    return code
