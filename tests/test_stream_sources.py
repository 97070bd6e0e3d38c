"""Camera sources without a server: camera specs, image folders (order, ground truth), `synthetic:CATEGORY`,
video files and a live HTTP camera through PyAV (real files written by PyAV, a real HTTP server on loopback,
reconnection when the stream ends, the open timeout of a silent camera), the drop-oldest window, the AUROC."""

from __future__ import annotations

import functools
import io
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler
from http.server import ThreadingHTTPServer

import av
import numpy as np
import pytest
from frame_samples import encode
from frame_samples import scene
from PIL import Image
from sklearn.metrics import roc_auc_score
from stream_helpers import wait_until

from pipeline.stream.camera import DROP_OLDEST
from pipeline.stream.camera import Camera
from pipeline.stream.report import auroc
from pipeline.stream.sources import CameraSpecError
from pipeline.stream.sources import FolderSource
from pipeline.stream.sources import SourceError
from pipeline.stream.sources import open_source
from pipeline.stream.sources import parse_camera
from pipeline.stream.sources import parse_cameras
from pipeline.stream.video import VideoSource


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cam1", "expected NAME=SOURCE"),
        ("cam1=", "expected NAME=SOURCE"),
        ("cam 1=/data", "must be 1-64 letters"),
        ("cam:1=/data", "must be 1-64 letters"),
        ("cam1=synthetic:", "synthetic needs a category"),
        ("cam1=ftp://host/x", "URL scheme 'ftp' is not supported"),
    ],
)
def test_bad_camera_specs_are_named(text, message):
    with pytest.raises(CameraSpecError, match=message):
        parse_camera(text)


def test_camera_names_are_unique():
    assert parse_camera("line-1.a=rtsp://10.0.0.7/s").source == "rtsp://10.0.0.7/s"
    with pytest.raises(CameraSpecError, match="'a' is given twice"):
        parse_cameras(["a=/x", "b=/y", "a=/z"])


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_labelled_folder_sorted_with_ground_truth(tmp_path):
    for name in ("good/b.png", "good/a.jpg", "scratch/a.png", "crack/z.jpg", "top.jpg", "ground_truth/scratch/a.png"):
        _write(tmp_path / name, encode(scene(20, 30, seed=len(name))))
    _write(tmp_path / "good/notes.txt", b"not an image")
    source = FolderSource(tmp_path)
    source.open()
    got = [(c.name, c.truth) for c in source.frames(threading.Event())]
    assert got == [("crack/z.jpg", 1), ("good/a.jpg", 0), ("good/b.png", 0), ("scratch/a.png", 1), ("top.jpg", None)]
    assert source.frames(threading.Event()).__next__().data == (tmp_path / "crack/z.jpg").read_bytes()  # as on disk


def test_plain_folder_loops_and_unreadable_file_is_a_frame_error(tmp_path):
    for k in range(3):
        _write(tmp_path / f"{k}.png", encode(scene(20, 30, seed=k), "PNG"))
    (tmp_path / "1.png").chmod(0)
    source = FolderSource(tmp_path, loop=True)
    source.open()
    frames = source.frames(threading.Event())
    got = [next(frames) for _ in range(7)]
    assert [c.name for c in got] == ["0.png", "1.png", "2.png"] * 2 + ["0.png"]
    assert all(c.truth is None for c in got)
    readable = all(c.error is None for c in got)  # root reads any file: the error shows only for other users
    assert readable or ("cannot read" in got[1].error and got[1].data == b"")


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "nope").open()
    _write(tmp_path / "readme.txt", b"x")
    with pytest.raises(SourceError, match="holds no images"):
        FolderSource(tmp_path).open()
    spec = parse_camera(f"c={tmp_path / 'missing'}")
    with pytest.raises(SourceError, match="camera c: .*is not a folder, a video file, a URL or synthetic"):
        open_source(spec)


def test_synthetic_camera_interleaves_and_starts_per_camera(stream_assets):
    sources = {}
    for name in ("a", "b"):
        sources[name] = open_source(parse_camera(f"{name}=synthetic:metal"), synthetic_root=stream_assets.synthetic)
    stop = threading.Event()
    a = [c for _, c in zip(range(32), sources["a"].frames(stop))]
    b_names = [c.name for _, c in zip(range(16), sources["b"].frames(stop))]
    assert [c.name for c in a[:16]] == [c.name for c in a[16:]]  # replayed in a loop
    assert sorted(b_names) == sorted(c.name for c in a[:16]) and b_names != [c.name for c in a[:16]]
    assert {c.truth for c in a} == {0, 1} and all((c.truth == 0) == c.name.startswith("good/") for c in a)
    runs = "".join(str(c.truth) for c in a[:16]).replace("01", "0 1").replace("10", "1 0").split()
    assert max(len(run) for run in runs) <= 4  # 8 good, 4 kinds x 2 defects: spread, not grouped
    with pytest.raises(SourceError, match="synthetic:wood: no test split .* it holds: metal"):
        open_source(parse_camera("c=synthetic:wood"), synthetic_root=stream_assets.synthetic)
    with pytest.raises(SourceError, match="ssn synth --out"):
        open_source(parse_camera("c=synthetic:metal"), synthetic_root=stream_assets.tmp / "absent")


def write_video(path, count: int, size=(64, 48), codec="mpeg4", fmt=None) -> list[np.ndarray]:
    """A real video file written by PyAV; returns the frames written (uint8 [H, W, 3])."""
    frames = [scene(size[1], size[0], seed=k) for k in range(count)]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return frames


def test_video_file_frames_are_jpegs_of_the_video(tmp_path):
    written = write_video(tmp_path / "clip.mp4", 8)
    source = open_source(parse_camera(f"v={tmp_path / 'clip.mp4'}"))
    assert isinstance(source, VideoSource) and not source.live
    got = list(source.frames(threading.Event()))
    assert [c.name for c in got] == [f"frame {k}" for k in range(8)]
    for capture, rgb in zip(got, written):
        assert capture.data[:2] == b"\xff\xd8"  # encoded once, as JPEG
        decoded = np.asarray(Image.open(io.BytesIO(capture.data)).convert("RGB"), np.float32)
        assert decoded.shape == rgb.shape and np.abs(decoded - rgb).mean() < 12  # mpeg4 + JPEG, same picture
    looped = open_source(parse_camera(f"v={tmp_path / 'clip.mp4'}"), loop=True)
    frames = looped.frames(threading.Event())
    assert len([next(frames) for _ in range(20)]) == 20
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(SourceError, match="camera b: cannot open"):
        open_source(parse_camera(f"b={tmp_path / 'broken.mp4'}"))


@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_live_http_camera_reconnects_when_its_stream_ends(tmp_path, http_server):
    write_video(tmp_path / "live.ts", 6, codec="mpeg2video", fmt="mpegts")  # a stream format, as cameras send
    source = open_source(parse_camera(f"dock={http_server}/live.ts"), open_timeout=5, read_timeout=5)
    assert source.live
    stop = threading.Event()
    got = [c for _, c in zip(range(15), source.frames(stop))]  # more frames than one session gives
    stop.set()
    assert len(got) == 15 and source.reconnects >= 2
    assert all(Image.open(io.BytesIO(c.data)).size == (64, 48) for c in got)


def test_silent_camera_url_times_out(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    try:
        start = time.monotonic()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/stream"
        with pytest.raises(SourceError, match=f"camera mute: cannot open '{url}'"):
            open_source(parse_camera(f"mute={url}"), open_timeout=1, read_timeout=1)
        assert time.monotonic() - start < 30
    finally:
        listener.close()


def test_drop_oldest_drops_the_oldest_pending_frames(tmp_path):
    for k in range(4):
        _write(tmp_path / f"{k}.png", encode(scene(20, 30, seed=k), "PNG"))
    source = FolderSource(tmp_path, loop=True)
    source.open()
    camera = Camera("c", source, DROP_OLDEST, window=2, max_frames=20)
    camera.thread.start()  # no owner: nothing is sent, the window stays full
    wait_until(lambda: camera.reader_done, 60, "the reader")
    assert camera.captured == 20 and camera.dropped == 18
    sent = [camera.next_to_send() for _ in range(3)]
    assert [e.seq for e in sent[:2]] == [18, 19] and sent[2] is None  # the newest two are kept
    for entry in sent[:2]:
        camera.sent(entry, stream=1)
    assert camera.next_to_send() is None  # window full
    ready = camera.ready()
    assert [e.seq for e in ready] == list(range(18)) and all(e.outcome.status == "dropped" for e in ready)


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    truths = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * truths, 1)  # many ties
    assert auroc(scores, truths) == pytest.approx(roc_auc_score(truths, scores), abs=1e-12)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0 and auroc([0.9, 0.1], [0, 1]) == 0.0
    assert auroc([0.5, 0.6], [1, 1]) is None
