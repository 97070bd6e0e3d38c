"""Served vs in-process throughput and latency of `supersimplenet_py` (JPEG frames in, score + map out).

    python bench/serve.py                      # tiny preset on CPU, both runtimes, about 4 minutes on 2 cores
    python bench/serve.py --preset mvtec --runtime onnxruntime torch --concurrency 1 4 --max-batch 8
    python bench/serve.py --preset mvtec --device gpu --concurrency 1 4 16 64 --max-batch 64

Both sides run the same code (`pipeline.deploy.serving.Predictor`: DALI decode, the inference module, postprocess) on
the same JPEG frames, with the module the python model loads from the deployed repository (`served_module`): per
`--runtime`, the PyTorch module (`torch`) or its exported ONNX graph under onnxruntime (`onnxruntime`, CPU only).
In-process: one caller, batches of min(concurrency, max batch). Served: a real tritonserver (`ssn serve`'s
launcher) on loopback ports, `concurrency` clients (tritonclient.grpc.aio), one frame per request, merged by the
dynamic batcher. The ratio column is served / in-process frames/s of the same runtime at the same concurrency; the
client runs on the same host, so on a small CPU it competes with the server for cores. The last lines compare the
runtimes. Random backbone weights (timing only). Target on 2 CPU cores, tiny preset: served >= 80% of in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment  # noqa: E402
from bench.harness import percentile  # noqa: E402
from bench.harness import print_table  # noqa: E402
from bench.harness import write_json  # noqa: E402
from pipeline import protocol  # noqa: E402
from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.checkpoint import save_checkpoint  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.config import get_preset  # noqa: E402
from pipeline.deploy import repository  # noqa: E402
from pipeline.deploy.deploy import DEFAULT_RUNTIME  # noqa: E402
from pipeline.deploy.deploy import DeployOptions  # noqa: E402
from pipeline.deploy.deploy import deploy  # noqa: E402
from pipeline.deploy.onnx_runtime import RUNTIMES  # noqa: E402
from pipeline.deploy.serving import Predictor  # noqa: E402
from pipeline.deploy.serving import served_module  # noqa: E402
from pipeline.deploy.triton_server import TritonProcess  # noqa: E402
from pipeline.inference import DEFAULT_IMPL  # noqa: E402
from pipeline.inference import INFERENCE_IMPLS  # noqa: E402
from pipeline.inference import Thresholds  # noqa: E402
from pipeline.model import SuperSimpleNet  # noqa: E402


def make_frames(height: int, width: int, count: int) -> list[bytes]:
    """Distinct JPEG frames (smooth scene + noise), as a camera would send them."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        rgb = np.stack([127 + 90 * np.sin(x / (9 + c) + y / 13 + i) for c in range(3)], -1)
        rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


def summarize(latencies: list[float], frames: int, seconds: float) -> dict[str, float]:
    return {
        "frames_per_s": frames / seconds,
        "p50_ms": 1e3 * percentile(latencies, 50),
        "p95_ms": 1e3 * percentile(latencies, 95),
        "p99_ms": 1e3 * percentile(latencies, 99),
        "frames": frames,
    }


def in_process(predictor: Predictor, frames: list[bytes], batch: int, seconds: float) -> dict[str, float]:
    predictor.predict(frames[:batch])  # warm-up
    latencies, done, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [frames[(done + k) % len(frames)] for k in range(batch)]
        t0 = time.perf_counter()
        predictor.predict(chunk)
        latencies.append(time.perf_counter() - t0)  # every frame of the batch waits for the batch
        done += batch
    return summarize(latencies, done, time.perf_counter() - start)


async def served(url: str, frames: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    arrays = [np.frombuffer(f, np.uint8)[None] for f in frames]
    outputs = [grpcclient.InferRequestedOutput(name) for name in protocol.OUTPUTS]
    latencies: list[float] = []

    async def worker(k: int, until: float, record: bool) -> int:
        n = 0
        while time.perf_counter() < until:
            array = arrays[(k + n * concurrency) % len(arrays)]
            tensor = grpcclient.InferInput(protocol.INPUT, list(array.shape), "UINT8")
            tensor.set_data_from_numpy(array)
            t0 = time.perf_counter()
            await client.infer(protocol.PYTHON_MODEL, [tensor], outputs=outputs)
            if record:
                latencies.append(time.perf_counter() - t0)
            n += 1
        return n

    async def counters() -> tuple[int, int]:
        stats = (await client.get_inference_statistics(protocol.PYTHON_MODEL, as_json=True))["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    await asyncio.gather(*(worker(k, time.perf_counter() + 1.0, False) for k in range(concurrency)))  # warm-up
    before = await counters()
    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(k, start + seconds, True) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    inferences, executions = (a - b for a, b in zip(await counters(), before))
    await client.close()
    return summarize(latencies, sum(counts), elapsed) | {"server_batch": inferences / max(executions, 1)}


def run_runtime(args, runtime: str, checkpoint: Path, frames: list[bytes], tmp: Path) -> list[dict]:
    """In-process and served rows of one runtime: deploy, load what the python model loads, then serve it."""
    options = DeployOptions(
        target="py",
        impl=args.impl,
        device=args.device,
        runtime=runtime,
        max_batch_size=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        torch_threads=args.threads,
    )
    repo = tmp / f"repo-{runtime}"
    deploy(checkpoint, repo, options)
    folder = repo / protocol.PYTHON_MODEL
    params = repository.parameters(repository.load_config(folder / "config.pbtxt"))
    device = "cuda" if args.device == "gpu" else "cpu"
    module = served_module(folder / "1", params, device)
    predictor = Predictor(module, Thresholds(), args.max_batch, device, torch_threads=args.threads)
    rows = []
    for concurrency in args.concurrency:
        batch = min(concurrency, args.max_batch)
        row = in_process(predictor, frames, batch, args.seconds)
        rows.append({"runtime": runtime, "mode": "in-process", "concurrency": concurrency, "batch": batch, **row})
    del predictor, module
    with TritonProcess(repo, log_path=tmp / f"server-{runtime}.log") as server:
        for concurrency in args.concurrency:
            row = asyncio.run(served(server.grpc_url, frames, concurrency, args.seconds))
            rows.append({"runtime": runtime, "mode": "served", "concurrency": concurrency, **row})
    return rows


def run(args: argparse.Namespace) -> dict:
    preset = get_preset(args.preset)
    device = "cuda" if args.device == "gpu" else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone on purpose: timing only
        backbone = load_backbone(preset.model.backbone, "random")
    torch.manual_seed(0)
    model = SuperSimpleNet(preset.model, backbone).eval()
    frames = make_frames(*(args.frame_size or preset.model.image_size), count=32)
    runtimes = args.runtime or ([*RUNTIMES] if args.device == "cpu" else [DEFAULT_RUNTIME[args.device]])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / "bench.safetensors", "random")
        for runtime in runtimes:
            results += run_runtime(args, runtime, checkpoint, frames, Path(tmp))
    env = environment(torch.device(device))
    size = list(args.frame_size or preset.model.image_size)
    return {
        "preset": preset.name,
        "impl": args.impl,
        "runtimes": runtimes,
        "frame_size": size,
        "max_batch": args.max_batch,
        "env": env,
        "results": results,
    }


def report(payload: dict) -> None:
    results = payload["results"]
    base = {(r["runtime"], r["concurrency"]): r["frames_per_s"] for r in results if r["mode"] == "in-process"}
    rows = [
        [
            r["runtime"],
            r["mode"],
            r["concurrency"],
            r.get("batch", r.get("server_batch")),
            r["frames_per_s"],
            r["p50_ms"],
            r["p95_ms"],
            r["p99_ms"],
            r["frames_per_s"] / base[(r["runtime"], r["concurrency"])],
        ]
        for r in results
    ]
    env = payload["env"]
    print(
        f"preset {payload['preset']} (impl {payload['impl']}), frames {payload['frame_size']} JPEG, "
        f"max batch {payload['max_batch']}, {env['device']} ({env.get('gpu', env['cpu'])}, {env['cpu_count']} CPUs)"
    )
    headers = ["runtime", "mode", "concurrency", "avg batch", "frames/s", "p50_ms", "p95_ms", "p99_ms", "x in-process"]
    print_table(headers, rows)
    best = {}
    for runtime in payload["runtimes"]:
        served = [r["frames_per_s"] for r in results if r["runtime"] == runtime and r["mode"] == "served"]
        local = [r["frames_per_s"] for r in results if r["runtime"] == runtime and r["mode"] == "in-process"]
        best[runtime] = max(served)
        ratio = max(served) / max(local)
        print(f"{runtime}: best served / best in-process frames/s: {ratio:.2f} (target >= 0.80 on 2 CPU cores, tiny)")
    if len(best) > 1:
        first, *others = payload["runtimes"]
        for other in others:
            print(f"best served frames/s, {other} / {first}: {best[other] / best[first]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--impl", default=DEFAULT_IMPL, choices=INFERENCE_IMPLS, help="inference module")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs")
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=list(RUNTIMES),
        help="served module(s), compared in one run: torch, onnxruntime (CPU only); default: both on cpu, torch on gpu",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=16, help="Triton max_batch_size (and in-process cap)")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher queue delay")
    parser.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"), help="JPEG size (default: model's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, both sides (0: torch's default)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row")
    parser.add_argument("--json", default="bench/results/serve.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.max_batch < 1 or args.seconds <= 0:
        parser.error("--concurrency and --max-batch must be >= 1, --seconds > 0")
    if args.device == "gpu" and "onnxruntime" in (args.runtime or []):
        parser.error("--runtime onnxruntime runs on CPU only (onnxruntime's CPU execution provider)")
    payload = run(args)
    report(payload)
    print(f"JSON: {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
