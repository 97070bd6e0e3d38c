"""The stream client against a real tritonserver (bundled Triton 2.51, python backend, CPU): several cameras on
one gRPC stream, every frame answered exactly once and in order, malformed frames failing alone, the window under
backpressure, and a silently dead stream found by the watchdog.

Expectations come from outside the client: results.jsonl as written (sequence numbers, statuses), the frames the
test itself put into the sources, and a spy on tritonclient's stream calls (what was sent and received).
"""

from __future__ import annotations

import pytest
from frame_samples import encode
from frame_samples import random_bytes
from frame_samples import scene
from frame_samples import truncated_jpeg
from sklearn.metrics import roc_auc_score
from stream_helpers import StreamSpy
from stream_helpers import assert_exactly_once_in_order
from stream_helpers import in_background
from stream_helpers import wait_until

from pipeline.stream.camera import DROP_OLDEST
from pipeline.stream.client import StreamOptions
from pipeline.stream.client import stream
from pipeline.stream.sources import CameraSpec

RUN_S = 600  # deadline of a whole run on a loaded machine


def _options(server, assets, **kwargs) -> StreamOptions:
    return StreamOptions(servers=(server.url,), synthetic_root=assets.synthetic, **kwargs)


def test_four_cameras_every_frame_once_in_order(stream_server, stream_assets, tmp_path, monkeypatch):
    spy = StreamSpy(monkeypatch)
    specs = [CameraSpec(f"cam{i}", "synthetic:metal") for i in range(4)]
    frames = 150
    result = stream(specs, _options(stream_server, stream_assets, frames=frames, window=6, maps=False), tmp_path)
    by_camera = assert_exactly_once_in_order(tmp_path, {s.name: frames for s in specs})
    records = [r for rs in by_camera.values() for r in rs]
    assert all(r["status"] == "ok" and r["score"] is not None and r["label"] in (0, 1) for r in records)
    assert all(r["server"] == stream_server.url and r["latency_ms"] > 0 for r in records)
    # one stream carried the four cameras, and the server answered it in request order
    [(sent, received)] = spy.streams()
    assert {s.rpartition(":")[0] for s in sent} == {s.name for s in specs}
    assert [request_id for request_id, _ in received] == sent and len(sent) == 4 * frames
    assert result.exit_code == 0 and result.problems == []
    assert result.totals["frames"] == 4 * frames and result.totals["unanswered"] == 0
    assert all(row["duplicates"] == 0 and row["max_inflight"] <= 6 for row in result.cameras)
    # the summary's AUROC is that of the streamed verdicts against the ground truth
    truth, score = [r["truth"] for r in records], [r["score"] for r in records]
    assert set(truth) == {0, 1}
    assert result.totals["auroc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)


BAD = {
    "01_truncated.jpg": (truncated_jpeg(), "truncated JPEG"),
    "03_empty.jpg": (b"", "frame is empty"),
    "04_random.png": (random_bytes(), "is not a supported image"),
    "07_random.jpg": (random_bytes(300, seed=5), "is not a supported image"),
}


def test_malformed_frames_get_errors_and_nothing_else_does(stream_server, stream_assets, tmp_path, monkeypatch):
    spy = StreamSpy(monkeypatch)
    folder = tmp_path / "line"
    folder.mkdir()
    for k in (0, 2, 5, 6, 8, 9):
        (folder / f"{k:02d}_good.jpg").write_bytes(encode(scene(48, 64, seed=k)))
    for name, (data, _) in BAD.items():
        (folder / name).write_bytes(data)
    names = sorted(p.name for p in folder.iterdir())
    specs = [CameraSpec("bad_a", str(folder)), CameraSpec("bad_b", str(folder))]
    specs += [CameraSpec("clean_a", "synthetic:metal"), CameraSpec("clean_b", "synthetic:metal")]
    options = _options(stream_server, stream_assets, frames=len(names), window=4, maps=False)
    result = stream(specs, options, tmp_path / "out")
    by_camera = assert_exactly_once_in_order(tmp_path / "out", {s.name: len(names) for s in specs})
    for camera in ("bad_a", "bad_b"):
        assert [r["name"] for r in by_camera[camera]] == names
        for r in by_camera[camera]:
            if r["name"] in BAD:
                assert r["status"] == "error" and BAD[r["name"]][1] in r["error"] and r["score"] is None, r
            else:
                assert r["status"] == "ok" and r["error"] is None and r["score"] is not None, r
    for camera in ("clean_a", "clean_b"):
        assert all(r["status"] == "ok" for r in by_camera[camera])
    # on the wire: every error response came back at the position of a malformed frame (the client matches
    # errors by position, since tritonclient drops their request ids), every success carried its own id
    bad_ids = {f"{c}:{names.index(n)}" for c in ("bad_a", "bad_b") for n in BAD}
    [(sent, received)] = spy.streams()
    assert len(received) == len(sent)
    for request_id, (got_id, error) in zip(sent, received):
        assert (error is not None) == (request_id in bad_ids), request_id
        assert got_id == (None if error is not None else request_id)
    assert result.totals["errors"] == len(bad_ids) and result.exit_code == 0


def test_backpressure_window_and_drop_oldest(relay, stream_assets, tmp_path, monkeypatch):
    spy = StreamSpy(monkeypatch)
    window, file_frames, live_frames = 3, 40, 200
    specs = [
        CameraSpec("files", "synthetic:metal", frames=file_frames),  # block (the default for files)
        CameraSpec("live", "synthetic:metal", policy=DROP_OLDEST, fps=40, frames=live_frames),
    ]
    cameras = {}
    options = _options(relay, stream_assets, window=window, maps=False)

    def run():
        return stream(specs, options, tmp_path, started=lambda cs: cameras.update((c.name, c) for c in cs))

    with in_background(run) as future:
        wait_until(lambda: len(cameras) == 2 and cameras["files"].delivered >= 0, RUN_S, "a first answer")
        with relay.silent():  # nothing comes back for a while (a stalled server or network): both windows fill up
            wait_until(lambda: cameras["live"].dropped >= 4 * window, 60, "the live camera to drop frames")
            wait_until(lambda: spy.max_outstanding().get("files", 0) >= window, 60, "the files camera's window")
        result = future.result(RUN_S)
    peak = spy.max_outstanding()
    assert peak == {"files": window, "live": window}  # in flight never above the window, and it was reached
    by_camera = assert_exactly_once_in_order(tmp_path, {"files": file_frames, "live": live_frames})
    files, live = by_camera["files"], by_camera["live"]
    assert all(r["status"] == "ok" for r in files)  # block: nothing lost
    dropped = [r for r in live if r["status"] == "dropped"]
    assert len(dropped) >= 4 * window and all(r["status"] in ("ok", "dropped") for r in live)
    row = {r["camera"]: r for r in result.cameras}
    assert row["live"]["dropped"] == len(dropped) and row["files"]["dropped"] == 0
    assert result.exit_code == 0


def test_silent_dead_stream_is_found_by_the_watchdog(relay, stream_assets, tmp_path, monkeypatch):
    spy = StreamSpy(monkeypatch)
    specs = [CameraSpec("a", "synthetic:metal", fps=20), CameraSpec("b", "synthetic:metal", fps=20)]
    frames, cameras = 60, {}
    options = _options(relay, stream_assets, frames=frames, window=4, maps=False, watchdog_s=1.5, connect_timeout_s=1.0)

    def run():
        return stream(specs, options, tmp_path, started=lambda cs: cameras.update((c.name, c) for c in cs))

    with in_background(run) as future:
        wait_until(lambda: len(cameras) == 2 and cameras["a"].delivered >= 3, RUN_S, "first answers")
        with relay.silent():  # connections stay open, nothing passes: no gRPC error is ever raised
            wait_until(lambda: cameras["a"].reconnects >= 1, 60, "the watchdog to stop the stream")
        result = future.result(RUN_S)
    by_camera = assert_exactly_once_in_order(tmp_path, {"a": frames, "b": frames})
    records = by_camera["a"] + by_camera["b"]
    assert all(r["status"] == "ok" for r in records)
    assert any(r["sends"] >= 2 for r in records)  # frames in flight on the dead stream were sent again
    assert len(spy.streams()) >= 2 and result.exit_code == 0
    assert all(row["stream_reconnects"] >= 1 for row in result.cameras)
