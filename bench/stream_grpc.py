"""The `triton-grpc` provider of bench/throughput.py: N cameras streaming JPEG frames over gRPC (the stream client
of pipeline/stream/, one bidirectional stream per server) to a tritonserver serving `supersimplenet_py`, beside
in-process inference of the same frames (pipeline.deploy.serving.Predictor: DALI decode, the module,
postprocess) in the same run.

    python bench/throughput.py --providers triton-grpc                         # starts a local server, tiny preset
    python bench/throughput.py --providers triton-grpc --server HOST:8001 --cameras 8 --stream-window 4

Rows: in-process at batch 1 (single-frame latency) and at the batch the cameras keep in flight
(cameras x window, capped at the max batch); served with 1 camera and window 1 (the served single-frame latency);
served with N cameras. Latency = first send -> answer; frames/s over the measured frames. Targets (tiny preset,
2 CPU cores, 4 cameras): served >= 70% of in-process frames/s, p99 < 4x the single-frame latency.
Random backbone weights (timing only).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from bench.harness import print_table

DEFAULTS = {"cameras": 4, "stream_frames": 150, "stream_window": 2, "max_batch": 16}


def add_arguments(parser) -> None:
    group = parser.add_argument_group("triton-grpc provider")
    group.add_argument("--server", help="a running tritonserver's gRPC address (default: start a local one)")
    group.add_argument("--cameras", type=int, default=DEFAULTS["cameras"], help="concurrent cameras")
    group.add_argument("--stream-frames", type=int, default=DEFAULTS["stream_frames"], help="frames per camera")
    group.add_argument("--stream-window", type=int, default=DEFAULTS["stream_window"], help="in flight per camera")
    group.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"], help="server max_batch_size")


def _stream(url: str, folder: Path, cameras: int, frames: int, window: int) -> dict:
    from pipeline.stream.client import StreamOptions
    from pipeline.stream.client import stream
    from pipeline.stream.sources import CameraSpec

    specs = [CameraSpec(f"cam{i}", str(folder)) for i in range(cameras)]
    options = StreamOptions(servers=(url,), frames=frames, loop=True, window=window, maps=False)
    result = stream(specs, options, log=lambda message: print(f"  stream: {message}"))
    if result.exit_code != 0 or result.totals["errors"]:
        raise RuntimeError(f"the benchmark stream failed: {result.problems or result.totals}")
    t = result.totals
    return {"frames_per_s": t["frames_per_s"], "p50_ms": t["p50_ms"], "p95_ms": t["p95_ms"], "p99_ms": t["p99_ms"]}


def run(args) -> dict:
    import torch

    from bench.serve import in_process  # the server-side modules load only when this provider runs
    from bench.serve import make_frames
    from pipeline.backbone import load_backbone
    from pipeline.checkpoint import save_checkpoint
    from pipeline.config import get_preset
    from pipeline.deploy.deploy import DeployOptions
    from pipeline.deploy.deploy import deploy
    from pipeline.deploy.serving import Predictor
    from pipeline.deploy.triton_server import TritonProcess
    from pipeline.model import SuperSimpleNet

    preset = get_preset(args.preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone on purpose: timing only
        backbone = load_backbone(preset.model.backbone, "random")
    torch.manual_seed(0)
    model = SuperSimpleNet(preset.model, backbone).eval()
    frames = make_frames(*preset.model.image_size, count=32)
    in_flight = min(args.cameras * args.stream_window, args.max_batch)
    seconds = max(2.0, 0.5 * args.repeats)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for k, data in enumerate(frames):
            (folder / f"{k:03d}.jpg").write_bytes(data)
        checkpoint = save_checkpoint(model, Path(tmp) / "bench.safetensors", "random")
        predictor = Predictor.from_checkpoint(checkpoint, max_batch_size=args.max_batch, torch_threads=args.threads)
        for batch in sorted({1, in_flight}):
            rows.append(
                {
                    "mode": "in-process",
                    "cameras": 0,
                    "window": 0,
                    "batch": batch,
                    **in_process(predictor, frames, batch, seconds),
                }
            )
        del predictor
        server = None
        url = args.server
        if url is None:
            options = DeployOptions(max_batch_size=args.max_batch, torch_threads=args.threads)
            deploy(checkpoint, Path(tmp) / "repo", options)
            server = TritonProcess(Path(tmp) / "repo", log_path=Path(tmp) / "server.log").__enter__()
            url = server.grpc_url
        try:
            _stream(url, folder, 1, 16, 1)  # warm-up
            started = time.perf_counter()
            single = _stream(url, folder, 1, max(16, args.stream_frames // 4), 1)
            rows.append({"mode": "triton-grpc", "cameras": 1, "window": 1, "batch": 1, **single})
            many = _stream(url, folder, args.cameras, args.stream_frames, args.stream_window)
            rows.append(
                {
                    "mode": "triton-grpc",
                    "cameras": args.cameras,
                    "window": args.stream_window,
                    "batch": in_flight,
                    **many,
                }
            )
            elapsed = time.perf_counter() - started
        finally:
            if server is not None:
                server.stop()
    return {
        "preset": preset.name,
        "server": args.server or "local (started by the benchmark)",
        "rows": rows,
        "seconds": elapsed,
    }


def report(payload: dict) -> None:
    rows = payload["rows"]
    inproc = {r["batch"]: r for r in rows if r["mode"] == "in-process"}
    single = next(r for r in rows if r["mode"] == "triton-grpc" and r["cameras"] == 1)
    table = [
        [r["mode"], r["cameras"], r["window"], r["batch"], r["frames_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"]]
        for r in rows
    ]
    print(
        f"\ntriton-grpc: preset {payload['preset']}, server {payload['server']}, JPEG frames, latency = send -> answer"
    )
    print_table(["mode", "cameras", "window", "batch", "frames/s", "p50_ms", "p95_ms", "p99_ms"], table)
    many = rows[-1]
    ratio = many["frames_per_s"] / inproc[many["batch"]]["frames_per_s"]
    print(
        f"{many['cameras']} cameras / in-process at batch {many['batch']}: {ratio:.2f} of the frames/s (target >= 0.70)"
    )
    print(
        f"p99 / single-frame latency: {many['p99_ms'] / single['p50_ms']:.2f} x the served single frame "
        f"(p50 {single['p50_ms']:.1f} ms), {many['p99_ms'] / inproc[1]['p50_ms']:.2f} x in-process batch 1 "
        f"(p50 {inproc[1]['p50_ms']:.1f} ms) (target < 4)"
    )
    payload["throughput_ratio"] = ratio
    payload["p99_over_single"] = many["p99_ms"] / single["p50_ms"]
