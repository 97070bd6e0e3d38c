"""Video files and live cameras (RTSP, HTTP, ...) through PyAV (`av`, FFmpeg bundled in its wheels).

Decoded frames are encoded to JPEG once, here, and sent as that file. A live URL is opened with an open timeout
and a read timeout (a silent camera raises instead of hanging); when it fails or ends, it is reopened with backoff
(0.5 s doubling to 5 s) until `reconnect_timeout` passes without a frame, and every reconnection is counted. RTSP
goes over TCP (no lost UDP packets, no NAT trouble).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

from pipeline.stream.sources import Capture
from pipeline.stream.sources import Source
from pipeline.stream.sources import SourceError

JPEG_QUALITY = 90


def _av():
    try:
        import av
    except ImportError as err:
        raise SourceError(
            f"video files and camera URLs need PyAV: pip install 'supersimplenet[camera]' ({err})"
        ) from None
    return av


def encode_jpeg(frame, quality: int = JPEG_QUALITY) -> bytes:
    """A decoded av.VideoFrame as JPEG file bytes."""
    buffer = io.BytesIO()
    frame.to_image().save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class VideoSource(Source):
    def __init__(
        self,
        target: str,
        live: bool,
        loop: bool = False,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
    ):
        super().__init__(target)
        self.target, self.live, self.loop = target, live, loop
        self.open_timeout, self.read_timeout, self.reconnect_timeout = open_timeout, read_timeout, reconnect_timeout
        self.reconnects = 0
        self._container = None

    def _open_container(self):
        av = _av()
        options = {"rtsp_transport": "tcp"} if self.target.lower().startswith("rtsp") else {}
        timeout = (self.open_timeout, self.read_timeout) if self.live else None
        try:
            container = av.open(self.target, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError) as err:
            raise SourceError(f"cannot open {self.target!r}: {err}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.target!r} has no video stream")
        return container

    def open(self) -> None:
        self._container = self._open_container()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def frames(self, stop: threading.Event) -> Iterator[Capture]:
        av = _av()
        count, last_frame = 0, time.monotonic()
        while not stop.is_set():
            if self._container is None:
                self._container = self._reopen(stop, last_frame)
                if self._container is None:
                    return
            error = None
            try:
                for frame in self._container.decode(video=0):
                    yield Capture(encode_jpeg(frame), f"frame {count}")
                    count, last_frame = count + 1, time.monotonic()
                    if stop.is_set():
                        return
            except (av.error.FFmpegError, OSError) as err:
                error = err
            self.close()
            if self.live:
                continue  # a live camera that ends or fails is reconnected
            if error is not None:
                raise SourceError(f"cannot read {self.target!r} after {count} frames: {error}")
            if not self.loop:
                return

    def _reopen(self, stop: threading.Event, last_frame: float):
        """Open again (a looped file, or a live camera that failed or ended); None when stopped. A live camera
        gets `reconnect_timeout` seconds from its last frame; every attempt after the first waits (backoff)."""
        if not self.live:
            return self._open_container()
        deadline, delay, last = last_frame + self.reconnect_timeout, 0.5, "no frame"
        attempt = 0
        while not stop.is_set():
            if attempt or time.monotonic() - last_frame > delay:  # no frame since the last open: back off
                if time.monotonic() + delay > deadline:
                    raise SourceError(f"lost {self.target!r}; no frame for {self.reconnect_timeout:.0f} s: {last}")
                stop.wait(delay)
                delay = min(2 * delay, 5.0)
            attempt += 1
            try:
                container = self._open_container()
            except SourceError as err:
                last = str(err)
            else:
                self.reconnects += 1
                return container
        return None
