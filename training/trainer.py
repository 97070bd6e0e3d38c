"""The training loop (spec §2): epochs of (prepare batch -> synthetic anomalies -> heads -> loss -> AdamW step),
MultiStepLR per epoch, periodic checkpoint pairs, exact resume, optional frozen-backbone feature cache, DDP.

Data order: unsupervised epochs are a `DistributedSampler` permutation of the good images; supervised, mixed and
weak epochs come from the balanced sampler (training/data/sampler.py). Both are pure functions of (seed, epoch)
and shard the global order as rank, rank + N, ..., so sample i of this process's epoch sits at global position
i * N + rank, which keys its synthetic anomalies (training/generator.py).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import save_checkpoint
from pipeline.model import SuperSimpleNet
from training import distributed
from training import state as st
from training.distributed import DistInfo
from training.feature_cache import CacheRefused
from training.feature_cache import FeatureCache
from training.feature_cache import cache_bytes
from training.generator import AnomalyGenerator
from training.generator import sample_seeds
from training.losses import ssn_loss
from training.optim import build_optimizer
from training.optim import build_scheduler
from training.optim import clip_gradients
from training.regimes import Resolved
from training.step import TrainBatch
from training.step import TrainForward
from training.step import autocast
from training.step import prepare_batch
from training.windows import crop_windows
from training.windows import window_offsets
from training.windows import windows_apply

CACHE_MODES = ("auto", "memory", "disk", "off")
AUTO_MEMORY_LIMIT = 8 << 30  # auto mode keeps at most this many bytes of features in memory, else disk


@dataclass(frozen=True)
class FitOptions:
    epochs: int
    batch_size: int
    out: Path | None = None  # final checkpoint path; periodic pairs go to <out>.ckpts/
    checkpoint_every: int = 0  # epochs between checkpoint pairs (0: only after the last epoch)
    resume: bool = False
    stop_after: int | None = None  # stop after this many epochs of this run (resume later)
    feature_cache: str = "auto"
    num_workers: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast of the trainable step on CPU (the backbone stays fp32)
    progress: bool = True
    backbone_source: str = ""  # recorded in the checkpoint files

    def step_precision(self, device: torch.device) -> str:
        """'bf16' or 'fp32': what the trainable step runs in on `device` (as training.step.autocast decides)."""
        return "bf16" if (self.cpu_bf16 if device.type == "cpu" else self.amp and device.type == "cuda") else "fp32"


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    step_losses: list[float] = field(default_factory=list)  # global loss of every step of this run
    cache: str = "off"


def make_sampler(dataset, resolved: Resolved, info: DistInfo) -> tuple[object, object]:
    """(dataset view, sampler) for the regime; both samplers have set_epoch and rank/num_replicas sharding."""
    seed = resolved.train.seed
    if resolved.regime.uses_defects:
        from training.data.sampler import balanced_parts

        return balanced_parts(
            dataset, flips=resolved.train.flips, seed=seed, num_replicas=info.world_size, rank=info.rank
        )
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    return dataset, sampler


def choose_cache(
    mode: str, view, model: SuperSimpleNet, out: Path | None, keys: list[int] | None = None
) -> tuple[str, Path | None]:
    """Resolve `auto`; refuse an explicit cache on augmented data that has no cache keys (the balanced sampler's
    flip codes are keys). Returns (storage or 'off', disk folder)."""
    if mode not in CACHE_MODES:
        raise ValueError(f"feature cache {mode!r}; accepted: {', '.join(CACHE_MODES)}")
    augmented = getattr(view, "augmented", False) and keys is None
    if mode == "off" or (mode == "auto" and augmented):
        return "off", None
    if augmented:
        raise CacheRefused(f"--feature-cache {mode}: the training data is augmented (flips); use --feature-cache off")
    if mode == "auto":
        count = len(view) if keys is None else len(keys)
        mode = "memory" if cache_bytes(model, count) <= AUTO_MEMORY_LIMIT else "disk"
    folder = None
    if mode == "disk":
        base = st.checkpoint_dir(out) if out is not None else Path(tempfile.gettempdir())
        folder = Path(tempfile.mkdtemp(prefix="feature_cache_", dir=base if base.exists() else None))
    return mode, folder


def epoch_batches(
    model, view, sampler, cache: FeatureCache | None, opts: FitOptions, resolved: Resolved, device
) -> tuple[int, Callable]:
    """(number of batches, generator of TrainBatch) for the sampler's current epoch."""
    if cache is not None:
        order = list(iter(sampler))
        chunks = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
        return len(chunks), lambda: (cache.batch(c) for c in chunks)
    loader = DataLoader(
        view,
        batch_size=opts.batch_size,
        sampler=sampler,
        num_workers=opts.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    align = resolved.mask_align_corners
    return len(loader), lambda: (prepare_batch(model, s, align, device, opts.amp) for s in loader)


def training_state(optimizer, scheduler, history: list[dict], resolved: Resolved, opts: FitOptions) -> dict:
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": st.scheduler_state(scheduler),
        "rng": st.rng_state(),
        "history": history,
        "model_config": resolved.model.to_json(),
        "train_config": repr(resolved.train),
        "regime": resolved.regime.name,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
    }


def restore(model, optimizer, scheduler, resolved: Resolved, opts: FitOptions) -> tuple[int, list[dict]]:
    """Load the newest complete checkpoint pair; refuse one written by a different run setup."""
    folder = st.checkpoint_dir(opts.out)
    model_path, saved = st.load_latest_pair(folder)
    expected = {
        "model_config": resolved.model.to_json(),
        "train_config": repr(resolved.train),
        "regime": resolved.regime.name,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
    }
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in expected.items() if saved.get(k) != v]
    if diffs:
        raise ValueError(f"cannot resume from {str(model_path)!r}: the run setup differs: " + "; ".join(diffs))
    loaded, _ = load_checkpoint(model_path, expected_config=resolved.model, impl=model.impl)
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(saved["optimizer"])
    st.load_scheduler_state(scheduler, saved["scheduler"])
    st.set_rng_state(saved["rng"])
    return int(saved["epoch"]), list(saved["history"])


def fit(
    model: SuperSimpleNet,
    dataset,
    resolved: Resolved,
    opts: FitOptions,
    device: torch.device,
    info: DistInfo | None = None,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, SuperSimpleNet], dict | None] | None = None,
) -> FitResult:
    """Train `model` in place on `dataset` (training split, sample contract) and return the loss history.
    `on_epoch_end(epoch, model)` (rank 0, e.g. a logging-only evaluation) may return a dict added to the epoch's
    history row; the model is back in training mode afterwards and no random state is consumed."""
    info = info or DistInfo()
    say = log if info.is_main else (lambda _msg: None)
    model.to(device).train()
    if info.enabled:
        for head in (model.seg_head, model.cls_head):
            distributed.global_batchnorm(head, device)
    optimizer = build_optimizer(model, resolved.train)
    scheduler = build_scheduler(optimizer, opts.epochs)
    start, history = 0, []
    if opts.resume:
        start, history = restore(model, optimizer, scheduler, resolved, opts)
        say(f"resumed after epoch {start} of {opts.epochs} from {st.checkpoint_dir(opts.out)}")
    forward = distributed.wrap(TrainForward(model, AnomalyGenerator(resolved.generator)), info, device)
    view, sampler = make_sampler(dataset, resolved, info)
    keys = sampler.cache_keys() if hasattr(sampler, "cache_keys") else None  # flip codes of a balanced epoch
    storage, folder = choose_cache(opts.feature_cache, view, model, opts.out, keys)
    result = FitResult(history=history, cache=storage)
    try:
        cache = None
        if storage != "off" and start < opts.epochs:
            t0 = time.perf_counter()
            cache = FeatureCache.build(
                model,
                view,
                opts.batch_size,
                device,
                resolved.mask_align_corners,
                storage,
                folder,
                opts.amp,
                opts.num_workers,
                keys=keys,
            )
            seconds = time.perf_counter() - t0
            say(f"feature cache ({storage}): {len(cache)} images, {cache.nbytes / 2**20:.1f} MiB, {seconds:.1f} s")
        last = opts.epochs if opts.stop_after is None else min(opts.epochs, start + opts.stop_after)
        for epoch in range(start, last):
            row = run_epoch(
                model, forward, optimizer, view, sampler, cache, epoch, resolved, opts, device, info, result
            )
            scheduler.step()
            if on_epoch_end is not None and info.is_main:
                row |= on_epoch_end(epoch + 1, model) or {}
                model.train()
            history.append(row)
            done = epoch + 1
            periodic = opts.checkpoint_every and done % opts.checkpoint_every == 0
            if opts.out is not None and (periodic or done == last):
                if info.is_main:
                    save_periodic(model, optimizer, scheduler, history, resolved, opts, done)
                distributed.barrier(info)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # the disk cache lives only as long as the run
    model.eval()
    for head in (model.seg_head, model.cls_head):
        distributed.plain_batchnorm(head)
    return result


def save_periodic(model, optimizer, scheduler, history, resolved: Resolved, opts: FitOptions, epoch: int) -> None:
    state = training_state(optimizer, scheduler, history, resolved, opts)
    st.save_pair(
        st.checkpoint_dir(opts.out), epoch, lambda path: save_checkpoint(model, path, opts.backbone_source), state
    )


def run_epoch(model, forward, optimizer, view, sampler, cache, epoch, resolved, opts, device, info, result) -> dict:
    sampler.set_epoch(epoch)
    count, batches = epoch_batches(model, view, sampler, cache, opts, resolved, device)
    sums = torch.zeros(5, dtype=torch.float64)
    images, t0 = 0, time.perf_counter()
    bar = tqdm(
        total=count,
        desc=f"epoch {epoch + 1}/{opts.epochs}",
        unit="batch",
        disable=not (opts.progress and info.is_main),
        leave=False,
    )
    for k, batch in enumerate(batches()):
        positions = [(k * opts.batch_size + j) * info.world_size + info.rank for j in range(len(batch.index))]
        parts = train_step(
            model,
            forward,
            optimizer,
            batch,
            sample_seeds(resolved.train.seed, epoch, positions),
            resolved,
            opts,
            device,
            info,
        )
        sums += parts
        images += len(batch.index)
        result.step_losses.append(float(parts[0]))
        bar.set_postfix(loss=f"{sums[0] / (k + 1):.4f}", lr=f"{optimizer.param_groups[1]['lr']:.1e}")
        bar.update(1)
    bar.close()
    steps = max(count, 1)
    mean = (sums / steps).tolist()
    row = {
        "epoch": epoch + 1,
        "loss": mean[0],
        "good": mean[1],
        "bad": mean[2],
        "seg_focal": mean[3],
        "cls_focal": mean[4],
        "lr": [g["lr"] for g in optimizer.param_groups],
        "seconds": time.perf_counter() - t0,
        "images": images * info.world_size,
    }
    if opts.progress and info.is_main:
        print(
            f"epoch {epoch + 1}/{opts.epochs}  loss {row['loss']:.4f}  lr {row['lr'][1]:.2e}  "
            f"{row['images'] / max(row['seconds'], 1e-9):.1f} img/s",
            flush=True,
        )
    return row


def train_step(model, forward, optimizer, batch: TrainBatch, seeds, resolved, opts, device, info) -> torch.Tensor:
    """One optimisation step; returns the global [total, good, bad, seg_focal, cls_focal] (float64, CPU)."""
    optimizer.zero_grad(set_to_none=True)
    mask, loss_mask, windows = batch.mask, batch.loss_mask, None
    size = resolved.train.feature_window
    if windows_apply(size, mask.shape[-2:]):  # heads train on one window per sample (training/windows.py)
        windows = window_offsets(mask, batch.label, size, seeds)
        mask, loss_mask = crop_windows(mask, windows, size), crop_windows(loss_mask, windows, size)
    with autocast(device, opts.amp, opts.cpu_bf16):
        seg_map, score, mask, label = forward(batch.l2, batch.l3, mask, batch.label, seeds, windows)
    copies = label.shape[0] // batch.label.shape[0]  # 2 (original + perturbed copy), 1 without synthetic anomalies
    is_segmented = batch.is_segmented.repeat(copies)
    loss_mask = None if loss_mask is None else loss_mask.repeat(copies, 1, 1, 1)
    reducer = (lambda t: distributed.sum_across(t, info)) if info.enabled else None
    parts = ssn_loss(seg_map, score, mask, label, is_segmented, loss_mask, reducer, info.world_size)
    parts.total.backward()
    clip_gradients(model, resolved.train.clip_grad)
    optimizer.step()
    values = torch.stack([p.detach().float() for p in parts]).double().cpu()
    return distributed.sum_across(values, info) / info.world_size if info.enabled else values


def steps_per_epoch(dataset_len: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(math.ceil(dataset_len / world_size) / batch_size)
