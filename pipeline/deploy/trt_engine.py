"""TensorRT engine (`model.plan`) from the exported ONNX, plus the metadata that says where it can run.

An engine runs only on the TensorRT version that built it and on GPUs of the compute capability it was built for
(deployment.md §4.3), so `build_engine` writes `model.plan.json` beside the plan (TensorRT version, GPU name,
compute capability, optimization profile, ONNX digest, timing-cache notes), and `engine_problems` compares that
with the host (pipeline/deploy/gpu_host.py: the libnvinfer version, every visible GPU) before a repository is
served. No torch here: this module also runs alone inside the NGC TensorRT container:

    python -m pipeline.deploy.trt_engine build repo/supersimplenet_trt/1/model.onnx --max-batch 16
    python -m pipeline.deploy.trt_engine verify repo/supersimplenet_trt/1/model.plan

TensorRT 10: the network is created STRONGLY_TYPED (layer precisions follow the ONNX types). TensorRT 11 removed
weak typing altogether (no BuilderFlag.FP16): every network is strongly typed. In both, FP16 comes from the ONNX
(`ssn export --dtype fp16`, fp32 I/O), never from a builder flag.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from pipeline.deploy import gpu_host

INSTALL_HINT = (
    "the `tensorrt` Python package is not importable. Build engines inside the NGC container of the same release "
    "as your tritonserver (nvcr.io/nvidia/tensorrt:<yy.mm>-py3, README 'Deploy on a GPU host'), or install the "
    "exact TensorRT version of your server: pip install tensorrt-cu12==<version> (pulls the libraries from "
    "pypi.nvidia.com)"
)
METADATA_SUFFIX = ".json"  # model.plan -> model.plan.json


class EngineError(RuntimeError):
    pass


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise EngineError(INSTALL_HINT) from err
    return tensorrt


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def host_description() -> dict:
    """TensorRT version and visible GPUs of this host (pipeline/deploy/gpu_host.py); None where unknown.
    `gpu`/`compute_capability` describe CUDA device 0, the one an engine is built on."""
    gpus = gpu_host.visible_gpus()
    name, cap = gpus[0] if gpus else (None, None)
    return {"tensorrt": gpu_host.tensorrt_version(), "gpu": name, "compute_capability": cap, "gpus": gpus}


def engine_problems(metadata: dict, host: dict) -> tuple[list[str], list[str]]:
    """(reasons to refuse the engine on `host`, warnings): the TensorRT release must be the same and every visible
    GPU must have the engine's compute capability (Triton puts a KIND_GPU instance on each visible GPU); another
    GPU model of that architecture only warns."""
    refuse, warn = [], []
    gpu, cap = metadata.get("gpu"), metadata.get("compute_capability")
    built = f"built with TensorRT {metadata.get('tensorrt')} for {gpu} (sm {cap})"
    if host.get("tensorrt") is None:
        refuse.append(f"cannot tell this host's TensorRT version (engine {built}); run where libnvinfer loads")
    elif not gpu_host.same_tensorrt(host["tensorrt"], metadata.get("tensorrt")):
        refuse.append(f"engine {built}, but this host has TensorRT {host['tensorrt']}")
    gpus = host.get("gpus") or ([(host["gpu"], host["compute_capability"])] if host.get("compute_capability") else [])
    if not gpus:
        refuse.append(f"no GPU found on this host (engine {built})")
    for index, (name, host_cap) in enumerate(gpus):
        if host_cap != cap:
            where = "this host's GPU" if len(gpus) == 1 else f"visible GPU {index}"
            refuse.append(f"engine {built}, but {where} {name} is sm {host_cap}")
    if not refuse and any(name != gpu for name, _ in gpus):
        others = sorted({name for name, _ in gpus if name != gpu})
        warn.append(f"engine {built} runs on {', '.join(others)} (same architecture; tactics were timed elsewhere)")
    return refuse, warn


def read_metadata(plan: str | Path) -> dict:
    plan = Path(plan)
    meta = plan.with_name(plan.name + METADATA_SUFFIX)
    if not meta.is_file():
        raise EngineError(
            f"engine {str(plan)!r} has no metadata file {meta.name}: rebuild it with pipeline.deploy.trt_engine"
        )
    return json.loads(meta.read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def attach_timing_cache(config, path: Path) -> tuple[object, list[str]]:
    """Give the builder `config` the timing cache stored at `path` (empty if none): (cache object, notes).

    TensorRT checks a cache's header against this device (pyCoreDoc.h `set_timing_cache`: "A failure will be
    reported if the CUDA device property in the provided cache is different"), and `create_timing_cache` gives
    None for bytes it cannot read. Such a cache, from another GPU or TensorRT release, is moved aside to
    `<name>.stale` (kept, never silently dropped), said in the notes, and the build times its tactics afresh.
    """
    notes = []
    data = path.read_bytes() if path.is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache, [f"reused {path.name} ({len(data)} bytes)"]
        reason = "TensorRT cannot read it" if cache is None else "it was made on another GPU or TensorRT release"
        stale = path.with_name(path.name + ".stale")
        os.replace(path, stale)
        notes.append(f"timing cache {path.name} not used: {reason}; moved to {stale.name}, tactics timed afresh")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT could not create an empty timing cache (create_timing_cache/set_timing_cache)")
    return cache, [f"new {path.name}", *notes]


def save_timing_cache(config, path: Path) -> list[str]:
    """Write the builder's timing cache to `path` (atomically); a note instead where TensorRT gives none."""
    cache = config.get_timing_cache()
    blob = cache.serialize() if cache is not None else None
    if blob is None or len(blob) == 0:
        return [f"TensorRT returned no timing cache after the build; {path.name} not written"]
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(bytes(blob))
    os.replace(partial, path)
    return []


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path | None = None,
    max_batch: int = 16,
    opt_batch: int | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    input_name: str = "images",
) -> dict:
    """Parse the ONNX, build one optimization profile [1, opt, max] on the batch axis, write plan + metadata."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    plan_path = Path(plan_path) if plan_path else onnx_path.with_name("model.plan")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if tensorrt_major(trt) >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {str(onnx_path)!r}: {errors}")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise EngineError(f"{str(onnx_path)!r} has inputs {sorted(inputs)}, expected {input_name!r}")
    item_shape = tuple(inputs[input_name].shape)[1:]  # [3, H, W]
    opt_batch = opt_batch or max_batch
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *item_shape), (opt_batch, *item_shape), (max_batch, *item_shape))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_path = Path(timing_cache) if timing_cache else plan_path.with_name("timing.cache")
    cache, cache_notes = attach_timing_cache(config, cache_path)  # `cache` must outlive the build

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see the log above)")
    plan_path.write_bytes(bytes(plan))
    cache_notes += save_timing_cache(config, cache_path)
    del cache
    for note in cache_notes[1:]:
        print(f"warning: {note}", file=sys.stderr)
    host = host_description()
    metadata = {
        "tensorrt": trt.__version__,
        "gpu": host["gpu"],
        "compute_capability": host["compute_capability"],
        "profile": {
            "input": input_name,
            "min": [1, *item_shape],
            "opt": [opt_batch, *item_shape],
            "max": [max_batch, *item_shape],
        },
        "strongly_typed": True,
        "workspace_gib": workspace_gib,
        "onnx_sha256": _sha256(onnx_path),
        "build_seconds": round(time.perf_counter() - start, 1),
        "timing_cache": cache_notes,
    }
    plan_path.with_name(plan_path.name + METADATA_SUFFIX).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TensorRT engines for the supersimplenet_trt model (no torch needed)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build model.plan (+ model.plan.json) from an exported ONNX file")
    build.add_argument("onnx", help="the ONNX file (ssn deploy --target trt writes supersimplenet_trt/1/model.onnx)")
    build.add_argument("--plan", help="output plan (default: model.plan beside the ONNX)")
    build.add_argument("--max-batch", type=int, default=16, help="profile max batch = Triton max_batch_size")
    build.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: max batch)")
    build.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit")
    build.add_argument("--timing-cache", help="timing cache file to reuse and update (default: beside the plan)")
    verify = sub.add_parser("verify", help="say whether a plan's metadata matches this host")
    verify.add_argument("plan", help="model.plan with its model.plan.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            meta = build_engine(
                args.onnx, args.plan, args.max_batch, args.opt_batch, args.workspace_gib, args.timing_cache
            )
            print(json.dumps(meta, indent=2))
            return 0
        refuse, warn = engine_problems(read_metadata(args.plan), host_description())
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in [*(f"refused: {r}" for r in refuse), *(f"warning: {w}" for w in warn)] or ["ok: matches this host"]:
        print(line)
    return 1 if refuse else 0


if __name__ == "__main__":
    sys.exit(main())
