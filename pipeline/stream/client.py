"""The stream client: cameras spread over servers, one gRPC stream per server, results to the sinks.

    specs -> sources (opened; a camera that cannot open is reported and the others run)
          -> Camera reader threads -> Connection threads (one per server; cameras assigned round-robin,
             several cameras multiplexed on each stream, frames tagged camera:seq)
          -> Sinks thread (results.jsonl, overlays, alarm, statistics) -> live table / final summary

`stream(specs, options, ...)` is the Python entry point (`ssn stream` calls it). Every captured frame ends in
exactly one record, per camera in sequence order, whatever happens to the servers (connection.py). Scale-out is
more tritonserver replicas (behind a Kubernetes Service, or listed with several `--server`): cameras are spread
over the servers given, and move to a live one when theirs dies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from pipeline import protocol
from pipeline.stream.camera import BLOCK
from pipeline.stream.camera import DROP_OLDEST
from pipeline.stream.camera import Camera
from pipeline.stream.camera import Entry
from pipeline.stream.connection import Connection
from pipeline.stream.connection import ConnectionOptions
from pipeline.stream.connection import TlsOptions
from pipeline.stream.connection import make_client
from pipeline.stream.report import Stats
from pipeline.stream.sinks import Alarm
from pipeline.stream.sinks import Record
from pipeline.stream.sinks import Sinks
from pipeline.stream.sinks import stderr_log
from pipeline.stream.sources import DEFAULT_SYNTHETIC_ROOT
from pipeline.stream.sources import CameraSpec
from pipeline.stream.sources import SourceError
from pipeline.stream.sources import open_source


class StreamError(RuntimeError):
    """The run cannot start (no server reachable, unknown model, no camera could open)."""


@dataclass(frozen=True)
class StreamOptions:
    servers: tuple[str, ...]
    model: str = protocol.PYTHON_MODEL
    window: int = 8  # frames in flight per camera
    policy: str | None = None  # None: block for files and synthetic cameras, drop-oldest for live URLs
    fps: float = 0.0  # pace of file and synthetic cameras (0: as fast as the window allows)
    frames: int | None = None  # stop each camera after this many frames
    loop: bool = False  # replay folders and video files
    maps: bool = True  # request the anomaly map (overlays) at `map_stride`
    map_stride: int = 4
    watchdog_s: float = 30.0
    connect_timeout_s: float = 5.0
    wait_ready_s: float = 0.0  # at start, wait this long for the servers and the model to be ready
    give_up_s: float = 120.0
    keepalive_s: float = 300.0
    tls: TlsOptions | None = None
    synthetic_root: Path = DEFAULT_SYNTHETIC_ROOT
    open_timeout_s: float = 10.0  # camera URLs
    read_timeout_s: float = 10.0
    grace_s: float = 10.0  # after Ctrl-C, time to answer the frames already captured

    def connection(self) -> ConnectionOptions:
        return ConnectionOptions(
            self.model,
            self.maps,
            self.map_stride,
            self.watchdog_s,
            self.connect_timeout_s,
            self.give_up_s,
            self.keepalive_s,
            self.tls,
        )


@dataclass
class StreamResult:
    totals: dict
    cameras: list[dict]
    problems: list[str] = field(default_factory=list)  # cameras that could not run, servers not reachable
    exit_code: int = 0
    out: Path | None = None

    def to_json(self) -> str:
        return json.dumps({"totals": self.totals, "cameras": self.cameras, "problems": self.problems}, indent=1)


def check_servers(options: StreamOptions, log: Callable[[str], None]) -> list[str]:
    """Each server reachable with the model ready (waiting up to `wait_ready_s`): the problems found.
    StreamError at once for a server that is up but does not have the model (a typo, not an outage)."""
    from tritonclient.utils import InferenceServerException

    problems = []
    for url in options.servers:
        deadline = time.monotonic() + options.wait_ready_s
        client = make_client(url, options.connection())
        try:
            while True:
                timeout = options.connect_timeout_s
                try:
                    if client.is_model_ready(options.model, client_timeout=timeout):
                        break
                    models = client.get_model_repository_index(as_json=True, client_timeout=timeout)
                    names = {m["name"]: m.get("state", "") for m in models.get("models", [])}
                    if options.model not in names:
                        raise StreamError(
                            f"server {url} has no model {options.model!r} (it has: {', '.join(names) or 'none'}); "
                            "choose one with --model"
                        )
                    last = f"model {options.model!r} is not ready ({names[options.model] or 'loading'})"
                except InferenceServerException as err:
                    last = f"cannot reach tritonserver: {err.message()}"
                if time.monotonic() >= deadline:
                    waited = f" after waiting {options.wait_ready_s:.0f} s" if options.wait_ready_s else ""
                    problems.append(f"server {url}: {last}{waited}")
                    break
                time.sleep(0.5)
        finally:
            client.close()
    return problems


class Run:
    """What the connection threads share: the server list, the sinks, the stop flags."""

    def __init__(self, sinks: Sinks, log: Callable[[str], None]):
        self.sinks, self.log = sinks, log
        self.connections: list[Connection] = []
        self.closing = threading.Event()
        self.abandon_reason: str | None = None

    def deliver(self, camera: Camera, entry: Entry) -> None:
        """From a connection thread, in sequence order per camera."""
        o = entry.outcome
        latency = 1e3 * (o.received - entry.sent_at) if o.received is not None and entry.sent_at else None
        record = Record(
            camera.name,
            entry.seq,
            entry.request_id,
            entry.timestamp,
            o.status,
            o.score,
            o.label,
            latency,
            o.error,
            o.server,
            entry.truth,
            entry.name,
            entry.sends,
        )
        self.sinks.put(record, entry.data if record.defective else b"", o.anomaly_map)
        entry.data = b""


def _open_cameras(specs: list[CameraSpec], options: StreamOptions, log) -> tuple[list[Camera], list[str]]:
    cameras, problems = [], []
    for spec in specs:
        try:
            source = open_source(
                spec, options.loop, options.synthetic_root, options.open_timeout_s, options.read_timeout_s
            )
        except SourceError as err:
            problems.append(str(err))
            log(f"error: {err}")
            continue
        policy = spec.policy or options.policy or (DROP_OLDEST if source.live else BLOCK)
        fps = options.fps if spec.fps is None else spec.fps
        frames = options.frames if spec.frames is None else spec.frames
        cameras.append(Camera(spec.name, source, policy, options.window, fps, frames))
    return cameras, problems


def _camera_extra(cameras: list[Camera]) -> dict[str, dict]:
    return {
        c.name: {
            "server": c.owner.url if c.owner is not None else "-",
            "reconnects": c.reconnects + c.source.reconnects,
            "stream_reconnects": c.reconnects,
            "source_reconnects": c.source.reconnects,
            "moves": c.moves,
            "duplicates": c.duplicates,
            "max_inflight": c.max_inflight,
            "policy": c.policy,
            "source": c.source.description,
        }
        for c in cameras
    }


def stream(
    specs: list[CameraSpec],
    options: StreamOptions,
    out: str | Path | None = None,
    overlays: bool = True,
    alarm_command: str | None = None,
    alarm: Callable[[Record], None] | None = None,
    callbacks: tuple[Callable[[Record], None], ...] = (),
    live_table: bool = False,
    log: Callable[[str], None] = stderr_log,
    started: Callable[[list[Camera]], None] | None = None,
) -> StreamResult:
    """Stream the cameras until each has finished (`frames` reached, or its source exhausted) or Ctrl-C.
    `started(cameras)` is called once they run (progress for tests and embedding code)."""
    if not options.servers:
        raise StreamError("no server: give at least one --server HOST:PORT")
    if options.window < 1 or options.frames is not None and options.frames < 1:
        raise ValueError(f"window={options.window} and frames={options.frames} must be >= 1")
    problems = check_servers(options, log)
    if len(problems) == len(options.servers):
        raise StreamError("no server is reachable:\n  " + "\n  ".join(problems))
    for problem in problems:
        log(f"warning: {problem}; its cameras go to the others until it answers")
    cameras, camera_problems = _open_cameras(specs, options, log)
    if not cameras:
        raise StreamError("no camera could start:\n  " + "\n  ".join(camera_problems))
    stats = Stats([c.name for c in cameras])
    alarm_runner = Alarm(alarm_command, alarm, log) if alarm_command or alarm else None
    sinks = Sinks(out, overlays and options.maps, alarm=alarm_runner, callbacks=(stats.add, *callbacks), log=log)
    run = Run(sinks, log)
    run.connections = [Connection(url, options.connection(), run) for url in options.servers]
    for i, camera in enumerate(cameras):
        connection = run.connections[i % len(run.connections)]
        camera.owner = connection
        connection.cameras.append(camera)
    threads = [threading.Thread(target=c.run, name=f"server-{c.url}", daemon=True) for c in run.connections]
    for thread in threads:
        thread.start()
    for camera in cameras:
        camera.thread.start()
    start = time.monotonic()
    try:
        if started is not None:
            started(cameras)
        _wait(cameras, stats, live_table, run, options)
    finally:
        run.closing.set()
        for camera in cameras:
            camera.close()
        for thread in threads:
            thread.join(30)
        sinks.close()
    elapsed = time.monotonic() - start
    rows = stats.rows(_camera_extra(cameras))
    problems = problems + camera_problems + [c.error for c in cameras if c.error]
    totals = stats.totals(elapsed)
    exit_code = 1 if problems or totals["unanswered"] else 0
    result = StreamResult(totals, rows, problems, exit_code, Path(out) if out is not None else None)
    if out is not None:
        (Path(out) / "summary.json").write_text(result.to_json() + "\n")
    return result


def _wait(cameras: list[Camera], stats: Stats, live_table: bool, run: Run, options: StreamOptions) -> None:
    """Until every camera has finished; Ctrl-C stops the cameras (captured frames are still answered for up to
    `grace_s`), a second Ctrl-C or the end of the grace gives the rest up."""
    live = None
    if live_table:
        from rich.live import Live

        from pipeline.stream.report import table

        live = Live(table(stats.rows(_camera_extra(cameras)), "streaming"), refresh_per_second=2, transient=True)
        live.start()
    try:
        try:
            while not all(c.finished for c in cameras):
                time.sleep(0.25)
                if live is not None:
                    live.update(table(stats.rows(_camera_extra(cameras)), "streaming"))
        except KeyboardInterrupt:
            run.log(
                f"stopping: answering the frames already captured (up to {options.grace_s:.0f} s; Ctrl-C again "
                "gives them up)"
            )
            for camera in cameras:
                camera.stop.set()
            try:
                deadline = time.monotonic() + options.grace_s
                while not all(c.finished for c in cameras) and time.monotonic() < deadline:
                    time.sleep(0.1)
            except KeyboardInterrupt:
                pass
            run.abandon_reason = "the run was stopped before this frame was answered"
            deadline = time.monotonic() + 10
            while not all(c.finished for c in cameras) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        if live is not None:
            live.stop()
