"""Shared parts of the stream tests: one small model deployed and served for the whole session (a real
tritonserver on free loopback ports that can be killed and restarted on the same ports), a TCP relay in front of
it that can go silent (connections stay open, no byte passes: a half-open network, or a server that answers
nothing), a small synthetic dataset, polling with deadlines, and a spy on tritonclient's stream calls (what was
really sent and received).

Why a relay and not SIGSTOP: the bundled server's python backend talks to its stub over shared memory with timed
interprocess locks; stopping and continuing the process group crashed it (`boost::interprocess::lock_exception`)
or left the stub spinning in its shared-memory allocator.

The session fixtures are imported by conftest.py, so every stream test file shares one server.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pipeline.checkpoint import save_checkpoint
from pipeline.config import ModelConfig
from pipeline.deploy.deploy import DeployOptions
from pipeline.deploy.deploy import deploy
from pipeline.deploy.serving import Predictor
from pipeline.deploy.triton_server import Ports
from pipeline.deploy.triton_server import TritonProcess
from pipeline.stream.sinks import read_records

STREAM_MODEL = ModelConfig(backbone="resnet18", image_size=(32, 32))  # the cheapest model: the tests are about frames
MAX_BATCH = 8
SERVER_READY_S = 300  # a loaded 2-core machine can take minutes to import torch in the python backend


@dataclass
class Assets:
    checkpoint: Path
    repository: Path
    synthetic: Path  # synthetic dataset root (category metal, 16 test images)
    tmp: Path


class StreamServer:
    """A real tritonserver on fixed (free) ports: start, kill -9, pause/resume, start again on the same ports."""

    def __init__(self, repository: Path, tmp: Path):
        self.repository, self.tmp = repository, tmp
        self.ports = Ports.free()
        self.starts = 0
        self.process: TritonProcess | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def start(self) -> StreamServer:
        self.starts += 1
        self.process = TritonProcess(self.repository, self.ports, log_path=self.tmp / f"server-{self.starts}.log")
        self.process.start()
        self.process.wait_ready(SERVER_READY_S)
        return self

    def signal(self, signum: int) -> None:
        os.killpg(self.process.process.pid, signum)  # the server and its python backend stubs

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.process.wait(60)
        self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Relay:
    """A TCP relay on a free loopback port to `target` (host, port). `silent()` holds every byte in both
    directions on open connections and on new ones, until it ends; nothing is lost or reordered."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    @contextmanager
    def silent(self):
        self.flowing.clear()
        try:
            yield
        finally:
            self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def relay(stream_server):
    relay = Relay(("127.0.0.1", stream_server.ports.grpc))
    yield relay
    relay.close()


@pytest.fixture(scope="session")
def stream_assets(tmp_path_factory) -> Assets:
    from conftest import make_model

    from training.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("stream")
    synthetic = generate(tmp / "synth", size=64, train=1, test=16, categories=["metal"], train_defects=0)
    checkpoint = save_checkpoint(make_model(STREAM_MODEL), tmp / "ck.safetensors", "random")
    # image threshold at the median score of the test images: about half of the frames are labelled defective
    frames = [p.read_bytes() for p in sorted((synthetic / "metal" / "test").rglob("*.png"))]
    scores = [o.score for o in Predictor.from_checkpoint(checkpoint, max_batch_size=MAX_BATCH).predict(frames)]
    options = DeployOptions(max_batch_size=MAX_BATCH, image_threshold=float(np.median(scores)), pixel_threshold=0.5)
    deploy(checkpoint, tmp / "repo", options)
    return Assets(checkpoint, tmp / "repo", synthetic, tmp)


@pytest.fixture(scope="session")
def stream_server(stream_assets) -> StreamServer:
    server = StreamServer(stream_assets.repository, stream_assets.tmp).start()
    yield server
    server.stop()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Poll `predicate` until it is true (returned) or `timeout` seconds pass (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Background:
    """`fn` on a daemon thread: a hung run fails its test (and never holds up the interpreter's exit)."""

    def __init__(self, fn: Callable[[], object]):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.value = fn()
        except BaseException as err:  # re-raised by result()
            self.error = err

    def result(self, timeout: float):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the stream was still running after {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.value


@contextmanager
def in_background(fn: Callable[[], object]):
    """Run `fn` on a thread; yields a handle whose result(timeout) returns its value or re-raises its error."""
    yield Background(fn)


def records_by_camera(out: Path) -> dict[str, list[dict]]:
    by_camera: dict[str, list[dict]] = defaultdict(list)
    for record in read_records(out / "results.jsonl"):
        by_camera[record["camera"]].append(record)
    return dict(by_camera)


def assert_exactly_once_in_order(out: Path, frames: dict[str, int]) -> dict[str, list[dict]]:
    """Every camera's frames 0..n-1 in results.jsonl, each once, in sequence order, with the request id camera:seq."""
    by_camera = records_by_camera(out)
    assert sorted(by_camera) == sorted(frames)
    for camera, records in by_camera.items():
        assert [r["seq"] for r in records] == list(range(frames[camera])), camera
        assert all(r["request_id"] == f"{camera}:{r['seq']}" for r in records)
    return by_camera


class StreamSpy:
    """Records, at tritonclient's boundary, every stream start/stop, request sent and response received (the
    client under test is not asked: this is what went over its gRPC streams)."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.events: list[tuple] = []  # (kind, client id, request id or None, error or None)
        cls = grpcclient.InferenceServerClient
        start, send, stop = cls.start_stream, cls.async_stream_infer, cls.stop_stream
        spy = self

        def start_stream(client, callback, *args, **kwargs):
            def on_response(result=None, error=None):
                spy._add("recv", client, result.get_response().id if result is not None else None, error)
                callback(result=result, error=error)

            spy._add("start", client)
            return start(client, on_response, *args, **kwargs)

        def async_stream_infer(client, model_name, inputs, *args, request_id="", **kwargs):
            spy._add("send", client, request_id)
            return send(client, model_name, inputs, *args, request_id=request_id, **kwargs)

        def stop_stream(client, *args, **kwargs):
            spy._add("stop", client)
            return stop(client, *args, **kwargs)

        monkeypatch.setattr(cls, "start_stream", start_stream)
        monkeypatch.setattr(cls, "async_stream_infer", async_stream_infer)
        monkeypatch.setattr(cls, "stop_stream", stop_stream)

    def _add(self, kind: str, client, request_id: str | None = None, error=None) -> None:
        with self.lock:
            self.events.append((kind, id(client), request_id, error))

    def streams(self) -> list[tuple[list[str], list[tuple[str | None, object]]]]:
        """Per stream: (request ids sent, in order; frame responses received, in order: (id, error)). Stream-level
        errors (a gRPC status: the connection broke, the stream was cancelled) are left out."""
        sends, recvs, order = defaultdict(list), defaultdict(list), []
        with self.lock:
            for kind, client, request_id, error in self.events:
                if kind == "start":
                    order.append(client)
                elif kind == "send":
                    sends[client].append(request_id)
                elif kind == "recv" and (error is None or error.status() is None):
                    recvs[client].append((request_id, error))
        return [(sends[c], recvs[c]) for c in order]

    def max_outstanding(self) -> dict[str, int]:
        """Per camera, the most frames sent and not yet answered at any moment (responses matched by position
        on their stream; a stopped stream's frames count no more)."""
        outstanding: dict[int, list[str]] = defaultdict(list)  # stream -> cameras of its frames in flight, in order
        peak: dict[str, int] = defaultdict(int)
        with self.lock:
            events = list(self.events)
        for kind, client, request_id, error in events:
            if kind == "send":
                camera = request_id.rpartition(":")[0]
                outstanding[client].append(camera)
                now = sum(stream.count(camera) for stream in outstanding.values())
                peak[camera] = max(peak[camera], now)
            elif kind == "recv" and (error is None or error.status() is None) and outstanding[client]:
                outstanding[client].pop(0)
            elif kind == "stop":
                outstanding[client].clear()
        return dict(peak)
