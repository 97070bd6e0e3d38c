"""`ssn deploy`: fill a Triton model repository from a checkpoint and the templates in `model_repository/`.

    --target py   supersimplenet_py: the checkpoint + the python adapter (CPU or GPU; any tritonserver); on CPU the
                  module runs as the exported ONNX graph under onnxruntime (`--runtime onnxruntime`, the default
                  there: measured fastest, README "CPU speed") or as PyTorch (`--runtime torch`, the GPU default)
    --target trt  the ensemble supersimplenet = preprocess (python: header checks + DALI GPU decode) ->
                  supersimplenet_trt (ONNX, and the TensorRT plan when `tensorrt` imports here) -> postprocess
                  (python), for one NGC tritonserver release (--triton-release; pipeline/deploy/triton_release.py)

Values taken from the checkpoint: image size (dims, DALI resize), normalization, sigma, thresholds (metadata
`thresholds`, overridable by flags); from the flags: batch sizes, queue delay, instances, map stride, impl, and the
server release (config fields it cannot parse are left out). The files carry no path of this machine.
Each config.pbtxt is the template parsed into tritonclient's protobuf ModelConfig, edited field by field and
written back, then the whole repository is checked (ensemble wiring).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.deploy import repository as repo
from pipeline.deploy.onnx_runtime import RUNTIMES
from pipeline.deploy.repository import RepositoryError
from pipeline.inference import DEFAULT_IMPL

TARGETS = {"py": ("supersimplenet_py",), "trt": ("preprocess", "supersimplenet_trt", "postprocess", "supersimplenet")}
DEFAULT_RUNTIME = {"cpu": "onnxruntime", "gpu": "torch"}  # py target; CPU: the faster one measured (README)


@dataclass(frozen=True)
class DeployOptions:
    target: str = "py"
    impl: str = DEFAULT_IMPL
    device: str = "cpu"  # py target: KIND_CPU or KIND_GPU instances
    runtime: str | None = None  # py target: "torch" or "onnxruntime" (CPU only); None: DEFAULT_RUNTIME[device]
    max_batch_size: int = 16
    queue_delay_us: int = 2000
    instances: int = 1
    torch_threads: int = 0  # py target, CPU: intra-op threads per instance (0: torch's default)
    map_stride: int = 1
    max_image_pixels: int = 64_000_000
    dtype: str = "fp32"  # trt target: compute dtype of the ONNX/engine (I/O stays fp32)
    build_engine: bool = True  # trt target: build model.plan when tensorrt imports
    triton_release: str | None = None  # trt target: NGC release YY.MM serving it (None: this NGC image's)
    image_threshold: float | None = None  # None: from the checkpoint
    pixel_threshold: float | None = None
    force: bool = False


def _copy_template(name: str, out: Path, force: bool) -> tuple[Path, object]:
    target = out / name
    if target.exists():
        if not force:
            raise RepositoryError(f"{target} already exists: choose another --out or pass --force to replace it")
        shutil.rmtree(target)
    shutil.copytree(repo.TEMPLATES / name, target, ignore=shutil.ignore_patterns("__pycache__", ".gitkeep"))
    (target / "1").mkdir(exist_ok=True)
    return target, repo.load_config(target / "config.pbtxt")


def _batching(config, options: DeployOptions, delay_us: int) -> None:
    config.max_batch_size = options.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = delay_us


def _instances(config, kind: str, count: int) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(kind), count=count)


def _thresholds(metadata: dict[str, str], options: DeployOptions):
    from pipeline.inference import Thresholds

    found = Thresholds.from_metadata(metadata)
    image = options.image_threshold if options.image_threshold is not None else found.image
    pixel = options.pixel_threshold if options.pixel_threshold is not None else found.pixel
    return Thresholds(image, pixel)


def _warm_max_batch(config, options: DeployOptions) -> None:
    first = config.model_warmup[0]
    extra = config.model_warmup.add()
    extra.CopyFrom(first)
    extra.name = "frame_batch_max"
    extra.batch_size = options.max_batch_size


def py_runtime(options: DeployOptions) -> str:
    if options.device not in DEFAULT_RUNTIME:
        raise ValueError(f"device={options.device!r} is unknown; accepted: {', '.join(DEFAULT_RUNTIME)}")
    runtime = options.runtime or DEFAULT_RUNTIME[options.device]
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is unknown; accepted: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and options.device != "cpu":
        raise ValueError(
            "--runtime onnxruntime serves on CPU instances only (onnxruntime's CPU execution provider); "
            "on a GPU use --runtime torch or --target trt"
        )
    return runtime


def _export_served_onnx(checkpoint: Path, path: Path, options: DeployOptions) -> Path:
    """The full fp32 graph of `options.impl`, tied to the checkpoint by its sha256 and checked with onnxruntime."""
    from pipeline.checkpoint import file_sha256
    from pipeline.deploy.export import export_onnx
    from pipeline.deploy.export import onnx_parity
    from pipeline.deploy.onnx_runtime import CHECKPOINT_HASH
    from pipeline.inference import load_inference_module

    module, _ = load_inference_module(checkpoint, options.impl)
    metadata = {"impl": options.impl, CHECKPOINT_HASH: file_sha256(checkpoint)}
    export_onnx(module, path, "full", "fp32", options.max_batch_size, metadata)
    onnx_parity(path, module)  # raises beyond the fp32 tolerance
    return path


def deploy_py(checkpoint: Path, out: Path, model_config, metadata, options: DeployOptions) -> list[str]:
    runtime = py_runtime(options)
    target, config = _copy_template("supersimplenet_py", out, options.force)
    shutil.copy2(checkpoint, target / "1" / "model.safetensors")
    if runtime == "onnxruntime":
        _export_served_onnx(checkpoint, target / "1" / "model.onnx", options)
    _batching(config, options, options.queue_delay_us)
    _instances(config, "KIND_GPU" if options.device == "gpu" else "KIND_CPU", options.instances)
    thresholds = _thresholds(metadata, options)
    for key, value in {
        "checkpoint": "model.safetensors",
        "impl": options.impl,
        "runtime": runtime,
        "onnx": "model.onnx" if runtime == "onnxruntime" else "",
        "image_threshold": thresholds.image,
        "pixel_threshold": thresholds.pixel,
        "map_stride": options.map_stride,
        "max_image_pixels": options.max_image_pixels,
        "torch_threads": options.torch_threads,
    }.items():
        repo.set_parameter(config, key, value)
    if options.device == "gpu":
        _warm_max_batch(config, options)
    repo.save_config(config, target / "config.pbtxt")
    return [
        f"{target.name}: {model_config.backbone} at {model_config.image_size}, impl {options.impl} on {runtime}, "
        f"thresholds {thresholds}"
    ]


def deploy_trt(checkpoint: Path, out: Path, model_config, metadata, options: DeployOptions) -> list[str]:
    from pipeline.deploy import triton_release
    from pipeline.deploy.export import export_onnx
    from pipeline.inference import load_inference_module

    release = triton_release.deploy_release(options.triton_release)
    notes = []
    height, width = model_config.image_size
    fh, fw = model_config.feature_size
    delay = min(options.queue_delay_us, 500)  # GPU steps: short queues (deployment.md §0.6)

    target, config = _copy_template("preprocess", out, options.force)
    _batching(config, options, delay)
    repo.tensor(config, "IMAGES", "output").dims[:] = [3, height, width]
    for key, value in {
        "image_size": f"{height},{width}",
        "mean": ",".join(str(m) for m in model_config.mean),
        "std": ",".join(str(s) for s in model_config.std),
        "max_image_pixels": options.max_image_pixels,
    }.items():
        repo.set_parameter(config, key, value)
    repo.save_config(config, target / "config.pbtxt")

    target, config = _copy_template("supersimplenet_trt", out, options.force)
    module, _ = load_inference_module(checkpoint, options.impl)
    onnx_path = export_onnx(
        module, target / "1" / "model.onnx", "split", options.dtype, options.max_batch_size, {"impl": options.impl}
    )
    _batching(config, options, delay)
    _instances(config, "KIND_GPU", options.instances)
    repo.tensor(config, "images", "input").dims[:] = [3, height, width]
    repo.tensor(config, "seg_logits", "output").dims[:] = [1, fh, fw]
    sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < options.max_batch_size} | {options.max_batch_size})
    del config.optimization.cuda.graph_spec[:]
    for size in sizes:
        config.optimization.cuda.graph_spec.add(batch_size=size)
    for warm in config.model_warmup:
        warm.inputs["images"].dims[:] = [3, height, width]
    config.model_warmup[-1].batch_size = options.max_batch_size
    repo.save_config(config, target / "config.pbtxt")
    notes.append(_engine(onnx_path, options))

    deploy_postprocess(out, model_config, _thresholds(metadata, options), options)

    target, config = _copy_template("supersimplenet", out, options.force)
    config.max_batch_size = options.max_batch_size
    if triton_release.allows_max_inflight_requests(release):
        config.ensemble_scheduling.max_inflight_requests = 4 * options.max_batch_size
    else:
        config.ensemble_scheduling.ClearField("max_inflight_requests")
        notes.append(
            f"tritonserver {release}: no ensemble backpressure (max_inflight_requests needs "
            f"{triton_release.MAX_INFLIGHT_REQUESTS}); intermediate tensors queue without bound under overload"
        )
    repo.save_config(config, target / "config.pbtxt")
    return notes


def deploy_postprocess(out: Path, model_config, thresholds, options: DeployOptions, kind: str = "KIND_GPU") -> Path:
    """The ensemble's python step (also servable alone: KIND_CPU runs it on the bundled CPU server)."""
    target, config = _copy_template("postprocess", out, options.force)
    _batching(config, options, min(options.queue_delay_us, 100))
    _instances(config, kind, 1)
    repo.tensor(config, "seg_logits", "input").dims[:] = [1, *model_config.feature_size]
    for key, value in {
        "image_size": ",".join(str(s) for s in model_config.image_size),
        "sigma": model_config.sigma,
        "image_threshold": thresholds.image,
        "pixel_threshold": thresholds.pixel,
        "map_stride": options.map_stride,
    }.items():
        repo.set_parameter(config, key, value)
    return repo.save_config(config, target / "config.pbtxt")


def _engine(onnx_path: Path, options: DeployOptions) -> str:
    from pipeline.deploy import trt_engine

    command = f"python -m pipeline.deploy.trt_engine build {onnx_path} --max-batch {options.max_batch_size}"
    if not options.build_engine:
        return f"engine not built (--no-engine); on the serving GPU, in the TensorRT container: {command}"
    try:
        meta = trt_engine.build_engine(onnx_path, max_batch=options.max_batch_size)
    except trt_engine.EngineError as err:
        return f"engine NOT built: {err}. Then run, on the serving GPU: {command}"
    cache = "; ".join(meta["timing_cache"])
    return f"engine built: TensorRT {meta['tensorrt']} on {meta['gpu']} (sm {meta['compute_capability']}); {cache}"


def deploy(checkpoint: str | Path, out: str | Path, options: DeployOptions = DeployOptions()) -> list[str]:
    """Fill `out` for `options.target`; returns notes for the user. Raises on any inconsistency."""
    from pipeline.checkpoint import read_metadata
    from pipeline.config import ModelConfig

    if options.target not in TARGETS:
        raise ValueError(f"target={options.target!r} is unknown; accepted: {', '.join(TARGETS)}")
    for field, low in (("max_batch_size", 1), ("instances", 1), ("queue_delay_us", 0), ("torch_threads", 0)):
        if getattr(options, field) < low:
            raise ValueError(f"{field}={getattr(options, field)} must be >= {low}")
    if options.max_image_pixels < 1:
        raise ValueError(f"max_image_pixels={options.max_image_pixels} must be >= 1")
    checkpoint, out = Path(checkpoint), Path(out)
    metadata = read_metadata(checkpoint)
    model_config = ModelConfig.from_json(metadata["config"])
    out.mkdir(parents=True, exist_ok=True)
    build = deploy_py if options.target == "py" else deploy_trt
    notes = build(checkpoint, out, model_config, metadata, options)
    problems = repo.ensemble_problems(repo.model_configs(out))
    if problems:
        raise RepositoryError("the repository written is inconsistent: " + "; ".join(problems))
    return notes


# ---------------------------------------------------------------------------------------------------------------
# `ssn deploy`


# integer options: DeployOptions field -> help (flag: --field-name)
INT_FLAGS = {
    "max_batch_size": "Triton max_batch_size (= TensorRT profile max)",
    "queue_delay_us": "dynamic batcher's max_queue_delay_microseconds (py target; GPU steps use at most 500)",
    "instances": "model instances (py model / TensorRT step)",
    "torch_threads": "py target: intra-op threads per instance, torch or onnxruntime (0: torch's default)",
    "map_stride": "default map stride: 1 full size, k>1 max over k x k blocks, 0 no map (clients override it)",
    "max_image_pixels": "frames whose header claims more pixels are refused before decoding",
}


def configure_deploy(parser) -> None:
    from pipeline.inference import INFERENCE_IMPLS

    defaults = DeployOptions()
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by this project")
    parser.add_argument(
        "--target",
        required=True,
        choices=list(TARGETS),
        help="py: portable python model; trt: DALI + TensorRT + postprocess ensemble (GPU host)",
    )
    parser.add_argument("--out", required=True, help="model repository folder to fill (created if missing)")
    parser.add_argument("--impl", default=DEFAULT_IMPL, choices=INFERENCE_IMPLS, help="inference module served")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="py target: instance kind")
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        help="py target: run the module as PyTorch, or as its ONNX graph under onnxruntime (CPU only); "
        f"default: {DEFAULT_RUNTIME['cpu']} on cpu (measured faster, README), {DEFAULT_RUNTIME['gpu']} on gpu",
    )
    for field, text in INT_FLAGS.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field), help=text)
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "fp16"], help="trt target: compute dtype (I/O stays fp32)"
    )
    parser.add_argument("--no-engine", action="store_true", help="trt target: write the ONNX, do not build the plan")
    parser.add_argument(
        "--triton-release",
        metavar="YY.MM",
        help="trt target: the NGC tritonserver release that serves the repository (minimum 24.11; default: the "
        "release of the NGC image this runs in)",
    )
    parser.add_argument("--image-threshold", type=float, help="override the checkpoint's image threshold")
    parser.add_argument("--pixel-threshold", type=float, help="override the checkpoint's pixel threshold")
    parser.add_argument("--force", action="store_true", help="replace model folders that already exist in --out")


def run_deploy(args) -> int:
    from pipeline.protocol import parse_map_stride

    parse_map_stride(args.map_stride, "--map-stride")
    options = DeployOptions(
        target=args.target,
        impl=args.impl,
        device=args.device,
        runtime=args.runtime,
        dtype=args.dtype,
        build_engine=not args.no_engine,
        triton_release=args.triton_release,
        image_threshold=args.image_threshold,
        pixel_threshold=args.pixel_threshold,
        force=args.force,
        **{field: getattr(args, field) for field in INT_FLAGS},
    )
    for note in deploy(args.checkpoint, args.out, options):
        print(note)
    print(f"repository ready: {args.out}  (serve it: ssn serve --model-repository {args.out})")
    return 0
