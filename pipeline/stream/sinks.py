"""Where the results go: one `Record` per captured frame, in sequence order per camera, to every sink.

    results.jsonl   one line per frame: camera, seq, request_id, source_ts, status (ok / error / dropped /
                    unanswered), score, label, latency_ms, error, server, truth, name, sends
    overlays/       CAMERA/SEQ.png for frames labelled defective: the frame beside it with the anomaly map in red
    alarm           a command (run with the record as JSON on stdin and SSN_CAMERA, SSN_SEQ, SSN_SCORE,
                    SSN_REQUEST_ID in its environment) or a Python callable, on every frame labelled defective
    callbacks       Python callables on every record (the statistics, tests, your own code)

Sinks run on their own thread, so a slow disk or alarm never holds up the streams; alarms run on another one,
with a bounded queue (alarms beyond it are counted as skipped).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = "results.jsonl"
OVERLAYS = "overlays"


@dataclass(frozen=True)
class Record:
    camera: str
    seq: int
    request_id: str
    source_ts: float  # capture time, seconds since the epoch
    status: str  # ok, error, dropped, unanswered
    score: float | None
    label: int | None  # 1 defective, 0 good, -1 the model has no threshold
    latency_ms: float | None  # first send -> answer (includes resends after a lost stream)
    error: str | None
    server: str | None  # the server that answered
    truth: int | None  # ground truth when the source knows it
    name: str  # file or frame name
    sends: int  # how many times it was sent (> 1 after a lost stream)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def defective(self) -> bool:
        return self.status == "ok" and self.label == 1


def read_records(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def render_overlay(data: bytes, anomaly_map: np.ndarray) -> np.ndarray:
    """uint8 [H, 2W, 3]: the frame, and the frame with the anomaly map (probabilities) blended in red."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = Image.fromarray((np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8))
    alpha = np.asarray(heat.resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR), np.float32)[..., None] / 255
    blended = rgb * (1 - 0.7 * alpha) + np.array([255, 0, 0], np.float32) * 0.7 * alpha
    return np.concatenate([rgb, blended], axis=1).round().astype(np.uint8)


class Alarm:
    """Runs the alarm (command or callable) on its own thread; never blocks the caller."""

    def __init__(self, command: str | None = None, call: Callable[[Record], None] | None = None, log=print):
        self.argv = shlex.split(command) if command else None
        self.call, self.log = call, log
        self.queue: queue.Queue = queue.Queue(maxsize=256)
        self.raised = self.failed = self.skipped = 0
        self.thread = threading.Thread(target=self._run, name="alarm", daemon=True)
        self.thread.start()

    def __call__(self, record: Record) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.skipped += 1

    def _run(self) -> None:
        while (record := self.queue.get()) is not None:
            try:
                if self.call is not None:
                    self.call(record)
                if self.argv is not None:
                    env = dict(os.environ, SSN_CAMERA=record.camera, SSN_SEQ=str(record.seq))
                    env.update(SSN_SCORE=f"{record.score:.6f}", SSN_REQUEST_ID=record.request_id)
                    done = subprocess.run(self.argv, input=record.to_json().encode(), env=env, timeout=30)
                    if done.returncode != 0:
                        raise RuntimeError(f"exit status {done.returncode}")
                self.raised += 1
            except Exception as err:
                self.failed += 1
                if self.failed == 1:
                    self.log(f"alarm failed on {record.request_id}: {err} (further failures are only counted)")

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


class Sinks:
    """The sink thread: `put(record, data, anomaly_map)` from the streams; `close()` drains and flushes."""

    def __init__(
        self,
        out: str | Path | None = None,
        overlays: bool = True,
        max_overlays: int = 500,
        alarm: Alarm | None = None,
        callbacks: tuple[Callable[[Record], None], ...] = (),
        log=print,
    ):
        self.out = Path(out) if out is not None else None
        self.jsonl = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(self.out / RESULTS, "w")  # noqa: SIM115 (closed in close())
        self.overlays = overlays and self.out is not None
        self.max_overlays, self.overlays_written, self.overlays_skipped = max_overlays, 0, 0
        self.alarm, self.callbacks, self.log = alarm, callbacks, log
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sinks", daemon=True)
        self.thread.start()

    def put(self, record: Record, data: bytes = b"", anomaly_map: np.ndarray | None = None) -> None:
        self.queue.put((record, data, anomaly_map))

    def _run(self) -> None:
        last_flush = time.monotonic()
        while (item := self.queue.get()) is not None:
            record, data, anomaly_map = item
            try:
                self._write(record, data, anomaly_map)
            except Exception as err:  # a sink failure is reported, the stream goes on
                self.log(f"sink failed on {record.request_id}: {type(err).__name__}: {err}")
            if self.jsonl is not None and time.monotonic() - last_flush > 0.5:
                self.jsonl.flush()
                last_flush = time.monotonic()

    def _write(self, record: Record, data: bytes, anomaly_map: np.ndarray | None) -> None:
        for callback in self.callbacks:
            callback(record)
        if self.jsonl is not None:
            self.jsonl.write(record.to_json() + "\n")
        if record.defective:
            if self.alarm is not None:
                self.alarm(record)
            if self.overlays and anomaly_map is not None and data:
                if self.overlays_written >= self.max_overlays:
                    self.overlays_skipped += 1
                    return
                from PIL import Image

                path = self.out / OVERLAYS / record.camera / f"{record.seq:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(render_overlay(data, anomaly_map)).save(path)
                self.overlays_written += 1

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.alarm is not None:
            self.alarm.close()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
