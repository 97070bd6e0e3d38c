"""One camera: a reader thread (source -> pacing -> pending frames) and the per-frame bookkeeping of its owner.

Every captured frame gets the next sequence number and, eventually, exactly one outcome: answered (score, label),
an error (the server refused that frame, or it could not be read), dropped (drop-oldest), or unanswered (the run
was stopped or no server came back). Outcomes are delivered in sequence order.

Threads: the reader appends to `pending` under `cond`; everything else belongs to the camera's owner, the one
`Connection` thread that holds it at a time (ownership moves with the camera, through the new owner's queue).

Window: at most `window` frames of a camera are in flight (sent, unanswered) at once. The reader keeps at most
`window` more in `pending`; when that is full it waits (`block`: files, nothing is lost) or drops the oldest
pending frame and counts it (`drop-oldest`: live cameras, the line gets the newest frames).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.stream.sources import Source
from pipeline.stream.sources import SourceError

BLOCK, DROP_OLDEST = "block", "drop-oldest"
POLICIES = (BLOCK, DROP_OLDEST)
OK, ERROR, DROPPED, UNANSWERED = "ok", "error", "dropped", "unanswered"


@dataclass(frozen=True)
class Outcome:
    status: str  # OK, ERROR, DROPPED, UNANSWERED
    score: float | None = None
    label: int | None = None
    error: str | None = None
    server: str | None = None
    received: float | None = None  # time.monotonic() of the response
    anomaly_map: np.ndarray | None = None  # [h, w] when requested


class Entry:
    """One captured frame, from capture to delivery."""

    __slots__ = (
        "seq",
        "request_id",
        "data",
        "name",
        "truth",
        "timestamp",
        "outcome",
        "stream",
        "sends",
        "sent_at",
        "last_sent",
    )

    def __init__(self, camera: str, seq: int, data: bytes, name: str, truth: int | None):
        self.seq, self.request_id = seq, f"{camera}:{seq}"
        self.data, self.name, self.truth = data, name, truth
        self.timestamp = time.time()  # source timestamp (capture), wall clock
        self.outcome: Outcome | None = None
        self.stream: int | None = None  # token of the stream it is in flight on
        self.sends = 0
        self.sent_at: float | None = None  # first send, time.monotonic()
        self.last_sent: float | None = None


class Camera:
    def __init__(
        self,
        name: str,
        source: Source,
        policy: str,
        window: int,
        fps: float = 0.0,
        max_frames: int | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is unknown; accepted: {', '.join(POLICIES)}")
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        self.name, self.source, self.policy, self.window = name, source, policy, window
        self.fps, self.max_frames = fps, max_frames
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.pending: deque[Entry] = deque()  # captured, not taken by the owner (dropped ones stay, resolved)
        self.live_pending = 0  # pending entries not dropped
        # owned by the owner connection
        self.owner = None
        self.waiting: dict[int, Entry] = {}  # taken, not delivered; insertion order == sequence order
        self.resend: list[Entry] = []  # lost with a stream: sent again first, in sequence order
        self.inflight = 0
        self.max_inflight = 0
        self.delivered = -1  # highest sequence number delivered
        # counters (read by the report)
        self.captured = self.dropped = self.reconnects = self.moves = self.duplicates = 0
        self.reader_done = False
        self.abandoned: str | None = None  # why the frames not answered yet were given up
        self.finished = False  # set by the owner: every captured frame delivered, reader done
        self.error: str | None = None  # why the camera stopped early
        self.thread = threading.Thread(target=self._read, name=f"camera-{name}", daemon=True)

    # --------------------------------------------------------------------------------------- reader thread
    def _read(self) -> None:
        try:
            start = time.monotonic()
            for k, capture in enumerate(self.source.frames(self.stop)):
                if self.stop.is_set() or (self.max_frames is not None and k >= self.max_frames):
                    break
                if self.fps > 0 and self.stop.wait(max(0.0, start + k / self.fps - time.monotonic())):
                    break
                entry = Entry(self.name, k, capture.data, capture.name, capture.truth)
                if capture.error:
                    entry.outcome = Outcome(ERROR, error=capture.error)
                self._put(entry)
        except SourceError as err:
            self.error = f"camera {self.name}: {err}"
        except Exception as err:  # a source bug must not hang the run: the camera stops, named
            self.error = f"camera {self.name}: source failed: {type(err).__name__}: {err}"
        finally:
            self.source.close()
            with self.cond:
                self.reader_done = True
            self._wake()

    def _put(self, entry: Entry) -> None:
        with self.cond:
            if entry.outcome is None:
                if self.policy == BLOCK:
                    while self.live_pending >= self.window and not self.abandoned:
                        self.cond.wait(0.5)
                elif self.live_pending >= self.window:
                    oldest = next(e for e in self.pending if e.outcome is None)
                    oldest.outcome, oldest.data = Outcome(DROPPED), b""
                    self.live_pending -= 1
                    self.dropped += 1
                if self.abandoned:
                    entry.outcome = Outcome(UNANSWERED, error=self.abandoned)
                else:
                    self.live_pending += 1
            self.pending.append(entry)
            self.captured += 1
        self._wake()

    def _wake(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.wake()

    # --------------------------------------------------------------------------------------- owner side
    def next_to_send(self) -> Entry | None:
        """The next frame to send (resends first), or None; frames resolved while pending become deliverable."""
        if self.inflight >= self.window:
            return None
        if self.resend:
            return self.resend.pop(0)
        with self.cond:
            while self.pending:
                entry = self.pending.popleft()
                self.waiting[entry.seq] = entry
                if entry.outcome is None:
                    self.live_pending -= 1
                    self.cond.notify_all()
                    return entry
        return None

    def sent(self, entry: Entry, stream: int) -> None:
        entry.stream, entry.sends = stream, entry.sends + 1
        entry.last_sent = time.monotonic()
        entry.sent_at = entry.sent_at or entry.last_sent
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)

    def resolve(self, entry: Entry, outcome: Outcome) -> bool:
        """Store the answer of an in-flight frame; False (and counted) for a frame already answered."""
        if entry.outcome is not None or entry.seq <= self.delivered:
            self.duplicates += 1
            return False
        entry.outcome, entry.stream = outcome, None
        self.inflight -= 1
        return True

    def lost(self, entries: list[Entry]) -> None:
        """These in-flight frames went down with their stream: send them again, in order."""
        for entry in entries:
            entry.stream = None
            self.inflight -= 1
        self.resend = sorted(self.resend + entries, key=lambda e: e.seq)

    def ready(self) -> list[Entry]:
        """Resolved frames that can be delivered now (sequence order; stops at the first unresolved one)."""
        if self.abandoned:  # frames the reader added after `abandon` are resolved already
            with self.cond:
                while self.pending:
                    entry = self.pending.popleft()
                    self.waiting[entry.seq] = entry
        out = []
        while self.waiting:
            seq = next(iter(self.waiting))
            entry = self.waiting[seq]
            if entry.outcome is None:
                break
            del self.waiting[seq]
            self.delivered = seq
            out.append(entry)
        return out

    def abandon(self, reason: str) -> list[Entry]:
        """Every frame not answered yet (resend, waiting, pending) resolved UNANSWERED; the reader stops."""
        self.stop.set()
        with self.cond:
            self.abandoned = reason
            while self.pending:
                entry = self.pending.popleft()
                self.waiting[entry.seq] = entry
            self.live_pending = 0
            self.cond.notify_all()
        for entry in self.waiting.values():
            if entry.outcome is None:
                entry.outcome, entry.stream = Outcome(UNANSWERED, error=reason), None
        self.resend, self.inflight = [], 0
        return self.ready()

    def close(self) -> None:
        """The run is over: the reader stops, and one waiting for room in `pending` gives its frame up."""
        self.stop.set()
        with self.cond:
            self.abandoned = self.abandoned or "the run ended before this frame was sent"
            self.cond.notify_all()

    def update_finished(self) -> bool:
        """Owner: every captured frame delivered and the reader done (then `finished` stays True)."""
        with self.cond:
            quiet = self.reader_done and not self.pending
        self.finished = quiet and not self.waiting and not self.resend
        return self.finished
