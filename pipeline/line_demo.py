"""`ssn demo` (= `make demo`): the whole line on the embedded default, CPU only, no downloads.

    synthetic dataset -> train the tiny preset -> deploy the portable repository -> start tritonserver
      -> stream 4 synthetic cameras through it (live table) -> final report -> stop the server

Each step is the real command a user would type (`ssn synth/train/deploy/serve/stream`), run as a child process;
the time of each step is printed at the end. The server listens on free loopback ports and is always stopped.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CAMERAS = ("cam1", "cam2", "cam3", "cam4")


def configure_demo(parser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/synth"), help="synthetic dataset (written if absent)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoint, repository, stream output")
    parser.add_argument(  # 4 x 2 = 8 frames/s: below the CPU server's rate at 320x320 (about 11; README)
        "--fps", type=float, default=2.0, help="frames per second of each camera"
    )
    parser.add_argument("--frames", type=int, default=120, help="frames per camera")
    parser.add_argument("--skip-training", action="store_true", help="reuse RUNS/tiny.safetensors if it exists")


def _ssn(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ssn"), *args]


def _step(name: str, timings: list, command: list[str]) -> None:
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    start = time.monotonic()
    code = subprocess.call(command)
    timings.append((name, time.monotonic() - start))
    if code != 0:
        raise RuntimeError(f"step {name!r} failed with exit status {code}")


def _wait_ready(process: subprocess.Popen, timeout: float) -> None:
    """Until `ssn serve` prints its ready line; its output is shown as it comes."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"ssn serve exited with status {process.wait()} before it was ready")
        print(f"   {line.rstrip()}", flush=True)
        if line.startswith("ready:"):
            return
    raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s")


def run_demo(args) -> int:
    from pipeline.deploy.triton_server import free_ports  # torch-free

    runs, timings = args.runs, []
    checkpoint, repository = runs / "tiny.safetensors", runs / "repo"
    if not (args.data / "synthetic.json").is_file():
        _step("synthetic dataset", timings, _ssn("synth", "--out", str(args.data)))
    if not (args.skip_training and checkpoint.is_file()):
        train = ("train", "--preset", "tiny", "--synthetic", "--data", str(args.data), "--out", str(checkpoint))
        _step("train tiny", timings, _ssn(*train, "--quiet"))
    _step(
        "deploy",
        timings,
        _ssn("deploy", "--checkpoint", str(checkpoint), "--target", "py", "--out", str(repository), "--force"),
    )
    http, grpc, metrics = (str(p) for p in free_ports(3))
    serve = _ssn(
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        http,
        "--grpc-port",
        grpc,
        "--metrics-port",
        metrics,
        "--log",
        str(runs / "server.log"),
    )
    print(f"\n== serve: {' '.join(serve)}", flush=True)
    start = time.monotonic()
    server = subprocess.Popen(
        serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        _wait_ready(server, 600)
        timings.append(("start tritonserver", time.monotonic() - start))
        shutil.rmtree(runs / "stream", ignore_errors=True)
        cameras = [a for name in CAMERAS for a in ("--camera", f"{name}=synthetic:metal")]
        stream = ("stream", "--server", f"127.0.0.1:{grpc}", "--synthetic-root", str(args.data), *cameras)
        stream += ("--fps", str(args.fps), "--frames", str(args.frames), "--out", str(runs / "stream"))
        _step("stream 4 cameras", timings, _ssn(*stream))
    finally:
        start = time.monotonic()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        timings.append(("stop tritonserver", time.monotonic() - start))
    print("\nsteps:")
    for name, seconds in timings:
        print(f"  {name:<20} {seconds:7.1f} s")
    print(f"  {'total':<20} {sum(s for _, s in timings):7.1f} s")
    return 0
