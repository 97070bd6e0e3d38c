"""One tritonserver: the thread that owns its tritonclient gRPC stream, sends the frames of the cameras it holds,
matches the responses, and recovers (tritonclient's stream calls are not thread-safe: only this thread makes them).

Matching. Responses on a stream of a non-decoupled model come back in request order (the server's stream handler
does it; the docs do not promise it, so tests/test_stream_client.py holds it on the real server). A success
carries its request id `camera:seq`; the Python client drops the id of a streamed *error* response, so an error
is matched by position: the oldest frame in flight on the stream. An error with a gRPC status (the server died,
the connection broke, the stream was cancelled) is a stream error, not a frame's.

Recovery. On a stream error, or when frames are in flight and nothing has come back for the watchdog's time (a
crashed server can leave a stream silently dead), the stream is stopped with `stop_stream(cancel_requests=True)`, every
frame it had in flight goes back to its camera to be sent again in order, and the server is retried with backoff
(0.25 s doubling to 4 s; ready = server and model ready). The watchdog's time is `watchdog_s`, or 4x the
slowest of the last 32 answers when that is longer (a slow server is not a dead one), doubled after each stream it
stopped (up to 4x) until a stream answers 100 frames. Meanwhile the cameras move to a live server, if there is
one. Responses of a stopped stream are ignored (each stream has a token), and a frame answered twice counts as a
duplicate and is delivered once. When no server has answered for `give_up_s`, the frames left are given up
(UNANSWERED) and the cameras stop.
"""

from __future__ import annotations

import queue
import ssl
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pipeline import protocol
from pipeline.stream.camera import ERROR
from pipeline.stream.camera import OK
from pipeline.stream.camera import Camera
from pipeline.stream.camera import Entry
from pipeline.stream.camera import Outcome

WAKE = "wake"
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.25, 4.0


@dataclass(frozen=True)
class TlsOptions:
    root_cert: str | None = None  # PEM file of the CA that signed the server's certificate (None: system roots)
    client_key: str | None = None  # PEM private key + certificate chain: mutual TLS
    client_cert: str | None = None


def load_tls(root_cert: str | None, client_key: str | None, client_cert: str | None) -> TlsOptions:
    """Checked TLS options: every file exists and loads (ValueError naming the flag, the file and the problem)."""
    if (client_key is None) != (client_cert is None):
        raise ValueError("--tls-client-key and --tls-client-cert go together (mutual TLS): give both or neither")
    files = {"--tls-root-cert": root_cert, "--tls-client-key": client_key, "--tls-client-cert": client_cert}
    for flag, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag} {path!r}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if root_cert is not None:
        try:
            context.load_verify_locations(cafile=root_cert)
        except (ssl.SSLError, ValueError) as err:
            raise ValueError(f"--tls-root-cert {root_cert!r} does not load as a PEM certificate: {err}") from None
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert, client_key)
        except (ssl.SSLError, ValueError) as err:
            raise ValueError(
                f"--tls-client-cert {client_cert!r} / --tls-client-key {client_key!r} do not load as a matching "
                f"PEM certificate and key: {err}"
            ) from None
    return TlsOptions(root_cert, client_key, client_cert)


@dataclass(frozen=True)
class ConnectionOptions:
    model: str = protocol.PYTHON_MODEL
    maps: bool = False  # request ANOMALY_MAP too (overlays)
    map_stride: int | None = None  # request parameter; None: the server's default
    watchdog_s: float = 30.0
    connect_timeout_s: float = 5.0
    give_up_s: float = 120.0
    keepalive_s: float = 300.0  # = tritonserver's default minimum ping interval: pings it accepts
    tls: TlsOptions | None = None


def make_client(url: str, options: ConnectionOptions):
    import tritonclient.grpc as grpcclient

    keepalive = grpcclient.KeepAliveOptions(keepalive_time_ms=int(1000 * options.keepalive_s))
    tls = options.tls
    if tls is None:
        return grpcclient.InferenceServerClient(url, keepalive_options=keepalive)
    return grpcclient.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=tls.root_cert,
        private_key=tls.client_key,
        certificate_chain=tls.client_cert,
        keepalive_options=keepalive,
    )


def _message(error) -> str:
    return error.message() if hasattr(error, "message") else str(error)


class Connection:
    def __init__(self, url: str, options: ConnectionOptions, supervisor):
        import tritonclient.grpc as grpcclient

        self.url, self.options, self.supervisor = url, options, supervisor
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cameras: list[Camera] = []
        self.up = False
        self.client = None
        self.token = 0  # stream generation: responses of a stopped stream are ignored
        self.inflight: list[tuple[Camera, Entry]] = []  # in send order = response order
        self.by_id: dict[str, tuple[Camera, Entry]] = {}
        self.last_progress = time.monotonic()
        self.backoff, self.next_try = FIRST_BACKOFF_S, 0.0
        self.down_since: float | None = time.monotonic()
        self.last_error: str | None = None
        self.streams = self.losses = self.out_of_order = self.stale = 0
        self.watchdog_s, self.answered_here = options.watchdog_s, 0  # adapted: see the module docstring
        self.latencies: deque[float] = deque(maxlen=32)
        names = [protocol.SCORE, protocol.LABEL] + ([protocol.ANOMALY_MAP] if options.maps else [])
        self.outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        stride = options.map_stride if options.maps else 0  # 0: the server skips the maps
        self.parameters = None if stride is None else {protocol.MAP_STRIDE: stride}
        self._grpc = grpcclient

    # ----------------------------------------------------------------------------- called from other threads
    def wake(self) -> None:
        self.events.put(WAKE)

    def adopt(self, camera: Camera) -> None:
        camera.owner = self
        self.events.put(("adopt", camera))

    def _on_response(self, token: int, result=None, error=None) -> None:  # tritonclient's response thread
        self.events.put((token, result, error, time.monotonic()))

    # ----------------------------------------------------------------------------- the owner thread
    def run(self) -> None:
        try:
            while not self.supervisor.closing.is_set():
                self.step()
        finally:
            self._close_client()

    def step(self) -> None:
        timeout = 0.2 if self.up else min(0.2, max(0.0, self.next_try - time.monotonic()))
        try:
            event = self.events.get(timeout=timeout)
            while True:
                self._handle(event)
                event = self.events.get_nowait()
        except queue.Empty:
            pass
        if self.supervisor.abandon_reason:
            self._abandon(self.supervisor.abandon_reason)
        if not self.up:
            if self.last_error is not None:  # failed (not merely not connected yet): cameras go where it is up
                self._move_cameras()
            if time.monotonic() >= self.next_try:
                self._connect()
            self._give_up()
        if self.up:
            self._send()
            self._watchdog()
        for camera in self.cameras:
            self._deliver(camera, camera.ready())
            camera.update_finished()

    def _handle(self, event) -> None:
        if event == WAKE:
            return
        if event[0] == "adopt":
            self.cameras.append(event[1])
            return
        token, result, error, received = event
        if token != self.token:
            self.stale += 1
            return
        if error is not None and error.status() is not None:
            self._lose(f"stream error: {_message(error)}")
            return
        self._match(result, error, received)

    def _match(self, result, error, received: float) -> None:
        if result is not None:
            request_id = result.get_response().id
            item = self.by_id.pop(request_id, None)
            if item is None:  # not in flight here: answered already
                self._count_duplicate(request_id)
                return
            if self.inflight[0] is item:
                self.inflight.pop(0)
            else:
                self.out_of_order += 1
                self.inflight.remove(item)
            score = float(result.as_numpy(protocol.SCORE)[0, 0])
            label = int(result.as_numpy(protocol.LABEL)[0, 0])
            amap = result.as_numpy(protocol.ANOMALY_MAP) if self.options.maps else None
            amap = amap[0] if amap is not None and amap.size else None
            outcome = Outcome(OK, score, label, None, self.url, received, amap)
        else:
            if not self.inflight:  # an error with nothing in flight: nothing to pin it on
                self.supervisor.log(f"server {self.url}: unmatched error response: {_message(error)}")
                return
            item = self.inflight.pop(0)
            self.by_id.pop(item[1].request_id, None)
            outcome = Outcome(ERROR, error=_message(error), server=self.url, received=received)
        camera, entry = item
        self.latencies.append(received - entry.last_sent)
        camera.resolve(entry, outcome)
        self.last_progress = received
        self.answered_here += 1
        if self.answered_here == 100:
            self.watchdog_s = self.options.watchdog_s

    def _count_duplicate(self, request_id: str) -> None:
        name = request_id.rpartition(":")[0]
        for camera in self.cameras:
            if camera.name == name:
                camera.duplicates += 1

    def _send(self) -> None:
        progress = True
        while progress and self.up:
            progress = False
            for camera in self.cameras:  # one frame per camera per round: fair among cameras
                entry = camera.next_to_send()
                if entry is None:
                    continue
                if not self.inflight:
                    self.last_progress = time.monotonic()
                camera.sent(entry, self.token)
                self.inflight.append((camera, entry))
                self.by_id[entry.request_id] = (camera, entry)
                array = np.frombuffer(entry.data, dtype=np.uint8)[None]  # [1, nbytes]
                tensor = self._grpc.InferInput(protocol.INPUT, list(array.shape), "UINT8")
                tensor.set_data_from_numpy(array)
                try:
                    self.client.async_stream_infer(
                        self.options.model,
                        [tensor],
                        request_id=entry.request_id,
                        outputs=self.outputs,
                        parameters=self.parameters,
                    )
                except Exception as err:  # the stream is no longer active
                    self._lose(f"send failed: {_message(err)}")
                    return
                progress = True

    def _watchdog(self) -> None:
        silent = time.monotonic() - self.last_progress
        limit = max(self.watchdog_s, 4 * max(self.latencies, default=0.0))
        if self.inflight and silent > limit:
            self._lose(f"no response for {silent:.1f} s with {len(self.inflight)} frames in flight (watchdog)")
            self.watchdog_s = min(2 * self.watchdog_s, 4 * self.options.watchdog_s)

    def _connect(self) -> None:
        timeout = self.options.connect_timeout_s
        client = None
        try:
            client = make_client(self.url, self.options)
            if not client.is_server_ready(client_timeout=timeout):
                raise RuntimeError("server not ready")
            if not client.is_model_ready(self.options.model, client_timeout=timeout):
                raise RuntimeError(f"model {self.options.model!r} not ready")
            client.start_stream(callback=partial(self._on_response, self.token))
        except Exception as err:
            if client is not None:
                _stop(client)
            self.last_error = _message(err)
            self.next_try = time.monotonic() + self.backoff
            self.backoff = min(2 * self.backoff, MAX_BACKOFF_S)
            return
        if self.streams:
            self.supervisor.log(f"server {self.url}: stream open again")
        self.client, self.up, self.streams, self.answered_here = client, True, self.streams + 1, 0
        self.backoff, self.down_since = FIRST_BACKOFF_S, None

    def _lose(self, reason: str) -> None:
        """The stream is gone: stop it, give its frames back to their cameras, retry the server later."""
        self.up, self.last_error, self.losses = False, reason, self.losses + 1
        self.down_since = time.monotonic()
        self.token += 1
        self._close_client()
        by_camera: dict[int, tuple[Camera, list[Entry]]] = {}
        for camera, entry in self.inflight:
            by_camera.setdefault(id(camera), (camera, []))[1].append(entry)
        for camera, entries in by_camera.values():
            camera.lost(entries)
        self.inflight.clear()
        self.by_id.clear()
        for camera in self.cameras:
            camera.reconnects += 1
        self.next_try = time.monotonic() + self.backoff
        lost = sum(len(e) for _, e in by_camera.values())
        self.supervisor.log(f"server {self.url}: {reason}; {lost} frames to send again")

    def _close_client(self) -> None:
        if self.client is not None:
            _stop(self.client)
            self.client = None

    def _move_cameras(self) -> None:
        """This server is down: its cameras (and their frames) move to the live server holding the fewest."""
        if not self.cameras:
            return
        live = {c: len(c.cameras) for c in self.supervisor.connections if c is not self and c.up}
        for camera in [c for c in self.cameras if not c.finished] if live else []:
            target = min(live, key=live.get)
            live[target] += 1
            self.cameras.remove(camera)
            camera.moves += 1
            self.supervisor.log(f"camera {camera.name}: moves from {self.url} to {target.url}")
            target.adopt(camera)

    def _give_up(self) -> None:
        if self.down_since is None or time.monotonic() - self.down_since < self.options.give_up_s:
            return
        for camera in self.cameras:
            if not camera.finished and camera.abandoned is None:
                reason = f"no server answered for {self.options.give_up_s:.0f} s (last: {self.url}: {self.last_error})"
                camera.error = camera.error or f"camera {camera.name}: {reason}"
                self._deliver(camera, camera.abandon(reason))

    def _abandon(self, reason: str) -> None:
        """The run is stopped: frames not answered yet are given up (the stream, if any, is cancelled)."""
        if self.inflight:
            self.up, self.token = False, self.token + 1
            self._close_client()
            self.inflight.clear()
            self.by_id.clear()
        for camera in self.cameras:
            if not camera.finished and camera.abandoned is None:
                self._deliver(camera, camera.abandon(reason))

    def _deliver(self, camera: Camera, entries: list[Entry]) -> None:
        for entry in entries:
            self.supervisor.deliver(camera, entry)


def _stop(client) -> None:
    """Stop a stream without waiting for its pending requests (the call can block otherwise), close the channel."""
    try:
        client.stop_stream(cancel_requests=True)
        client.close()
    except Exception:  # closing a broken client must not stop the recovery
        pass
