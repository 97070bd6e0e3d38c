"""`ssn stream`: cameras -> tritonserver(s) over gRPC streams -> results.jsonl, overlays, alarms, live table.

    ssn stream --server 127.0.0.1:8001 --camera line1=synthetic:metal --camera line2=/data/frames \\
               --camera dock=rtsp://10.0.0.7/stream1 --fps 10 --out runs/stream

Exit status: 0 when every camera ran and every frame got its answer (frame errors included: they are answers);
1 when a camera could not run or stopped early, a server was not reachable at the start, or frames were left
unanswered; 2 when nothing could start (bad arguments, no server reachable, unknown model, no camera opened).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import protocol
from pipeline.stream.camera import POLICIES


def configure_stream(parser) -> None:
    parser.add_argument(
        "--server", action="append", required=True, metavar="HOST:PORT", help="tritonserver gRPC address (repeat)"
    )
    parser.add_argument("--model", default=protocol.PYTHON_MODEL, help="served model name")
    parser.add_argument(
        "--camera",
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="SOURCE: an image folder, a video file, an rtsp:// or http:// URL, or synthetic:CATEGORY (repeat)",
    )
    parser.add_argument("--fps", type=float, default=0.0, help="pace of folder/video/synthetic cameras (0: no pacing)")
    parser.add_argument("--frames", type=int, help="stop each camera after N frames")
    parser.add_argument("--loop", action="store_true", help="replay image folders and video files")
    parser.add_argument("--window", type=int, default=8, help="frames in flight per camera")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        help="window full: wait, or drop the oldest frame (default: block for "
        "files and synthetic cameras, drop-oldest for camera URLs)",
    )
    parser.add_argument(
        "--map-stride", type=int, default=4, help="anomaly map returned for overlays: k x k max-pooled; 0: none"
    )
    parser.add_argument("--out", type=Path, help="write DIR/results.jsonl, DIR/overlays/, DIR/summary.json")
    parser.add_argument("--no-overlays", action="store_true", help="with --out: no PNG overlays (no maps sent)")
    parser.add_argument("--alarm-command", help="run on each frame labelled defective (record as JSON on stdin)")
    parser.add_argument("--no-table", action="store_true", help="no live table (it is off when stdout is no tty)")
    parser.add_argument("--synthetic-root", type=Path, default=Path("data/synth"), help="for synthetic:CATEGORY")
    parser.add_argument("--watchdog", type=float, default=30.0, help="seconds without a response = dead stream")
    parser.add_argument("--wait-ready", type=float, default=0.0, help="seconds to wait for the servers at start")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds per server health check")
    parser.add_argument("--give-up", type=float, default=120.0, help="seconds without any server: frames given up")
    parser.add_argument("--keepalive", type=float, default=300.0, help="gRPC keepalive ping period, seconds")
    parser.add_argument("--open-timeout", type=float, default=10.0, help="camera URLs: seconds to open")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="camera URLs: seconds without data")
    parser.add_argument("--tls", action="store_true", help="TLS to the servers (system roots unless --tls-root-cert)")
    parser.add_argument("--tls-root-cert", help="PEM CA certificate of the servers (implies --tls)")
    parser.add_argument("--tls-client-key", help="PEM client key, mutual TLS (with --tls-client-cert)")
    parser.add_argument("--tls-client-cert", help="PEM client certificate chain, mutual TLS")


def run_stream(args) -> int:
    from pipeline.stream.client import StreamOptions
    from pipeline.stream.client import stream
    from pipeline.stream.connection import load_tls
    from pipeline.stream.report import summary_lines
    from pipeline.stream.report import table
    from pipeline.stream.sources import parse_cameras

    specs = parse_cameras(args.camera)
    protocol.parse_map_stride(args.map_stride, "--map-stride")
    tls = None
    if args.tls or args.tls_root_cert or args.tls_client_key or args.tls_client_cert:
        tls = load_tls(args.tls_root_cert, args.tls_client_key, args.tls_client_cert)
    maps = args.map_stride > 0 and not args.no_overlays and args.out is not None
    same = ("model", "window", "policy", "fps", "frames", "loop", "map_stride", "synthetic_root")
    seconds = ("watchdog", "wait_ready", "connect_timeout", "give_up", "keepalive", "open_timeout", "read_timeout")
    options = StreamOptions(
        servers=tuple(s.removeprefix("grpc://") for s in args.server),
        maps=maps,
        tls=tls,
        **{name: getattr(args, name) for name in same},
        **{f"{name}_s": getattr(args, name) for name in seconds},
    )
    live = not args.no_table and sys.stdout.isatty()
    result = stream(specs, options, args.out, maps, args.alarm_command, live_table=live)
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(table(result.cameras, "stream summary", live=False))
    for line in summary_lines(result.totals):
        console.print(line, highlight=False)
    if result.out is not None:
        where = f"results: {result.out / 'results.jsonl'}; summary: {result.out / 'summary.json'}"
        console.print(where, highlight=False)
        if maps:
            console.print(f"overlays of frames labelled defective: {result.out / 'overlays'}/", highlight=False)
    for problem in result.problems:
        console.print(f"problem: {problem}", style="red", highlight=False)
    return result.exit_code
