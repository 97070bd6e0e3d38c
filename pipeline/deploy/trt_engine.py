"""TensorRT engine (`model.plan`) from the exported ONNX, plus the metadata that says where it can run.

An engine runs only on the TensorRT version that built it and on GPUs of the compute capability it was built for
(deployment.md §4.3), so `build_engine` writes `model.plan.json` beside the plan (TensorRT version, GPU name,
compute capability, optimization profile, ONNX digest), and `engine_problems` compares that with the host before a
repository is served. No torch here: this module also runs alone inside the NGC TensorRT container:

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
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def _gpu_from_nvidia_smi() -> tuple[str | None, str | None]:
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        name, cap = (s.strip() for s in out.split(",", 1))
        return name, cap
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, None


def host_description() -> dict[str, str | None]:
    """TensorRT version and GPU 0 of this host (None where unknown)."""
    try:
        import tensorrt

        version = tensorrt.__version__
    except ImportError:  # the tritonserver container has TensorRT libraries but no Python bindings
        version = os.environ.get("TRT_VERSION") or os.environ.get("TENSORRT_VERSION")
    name, cap = None, None
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            cap = "{}.{}".format(*torch.cuda.get_device_capability(0))
    except ImportError:
        pass
    if name is None:
        name, cap = _gpu_from_nvidia_smi()
    return {"tensorrt": version, "gpu": name, "compute_capability": cap}


def engine_problems(metadata: dict, host: dict) -> tuple[list[str], list[str]]:
    """(reasons to refuse the engine on `host`, warnings): the TensorRT version must match exactly and the GPU
    must have the same compute capability; another GPU model of that architecture only warns."""
    refuse, warn = [], []
    gpu, cap = metadata.get("gpu"), metadata.get("compute_capability")
    built = f"built with TensorRT {metadata.get('tensorrt')} for {gpu} (sm {cap})"
    if host.get("tensorrt") is None:
        refuse.append(f"cannot tell this host's TensorRT version (engine {built}); run where `tensorrt` imports")
    elif host["tensorrt"] != metadata.get("tensorrt"):
        refuse.append(f"engine {built}, but this host has TensorRT {host['tensorrt']}")
    if host.get("compute_capability") is None:
        refuse.append(f"no GPU found on this host (engine {built})")
    elif host["compute_capability"] != cap:
        refuse.append(f"engine {built}, but this host's GPU {host.get('gpu')} is sm {host['compute_capability']}")
    if not refuse and host.get("gpu") != gpu:
        warn.append(f"engine {built} runs on {host.get('gpu')} (same architecture; tactics were timed elsewhere)")
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
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)  # reuse earlier tactic timings of this GPU + version

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see the log above)")
    plan_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
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
