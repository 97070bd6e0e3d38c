"""Servers dying under a running stream, for real: tritonserver SIGKILLed mid-stream and started again on the same
port; two servers, one killed, its cameras moving to the other. Every frame ends in results.jsonl exactly once,
in order, answered."""

from __future__ import annotations

from stream_helpers import StreamServer
from stream_helpers import assert_exactly_once_in_order
from stream_helpers import in_background
from stream_helpers import wait_until

from pipeline.stream.client import StreamOptions
from pipeline.stream.client import stream
from pipeline.stream.sources import CameraSpec

RUN_S = 600


def test_server_killed_and_restarted_on_the_same_port(stream_server, stream_assets, tmp_path):
    specs = [CameraSpec(f"cam{i}", "synthetic:metal", fps=10) for i in range(4)]
    frames, cameras = 60, {}
    options = StreamOptions(
        servers=(stream_server.url,), synthetic_root=stream_assets.synthetic, frames=frames, window=4, maps=False
    )

    def run():
        return stream(specs, options, tmp_path, started=lambda cs: cameras.update((c.name, c) for c in cs))

    with in_background(run) as future:
        wait_until(lambda: len(cameras) == 4 and min(c.delivered for c in cameras.values()) >= 2, RUN_S, "answers")
        stream_server.kill()
        assert not any(c.finished for c in cameras.values())  # killed mid-stream
        stream_server.start()  # same ports; the model loads again
        result = future.result(RUN_S)
    by_camera = assert_exactly_once_in_order(tmp_path, {s.name: frames for s in specs})
    records = [r for rs in by_camera.values() for r in rs]
    assert all(r["status"] == "ok" and r["server"] == stream_server.url for r in records)
    assert result.exit_code == 0 and result.totals["unanswered"] == 0
    assert all(row["stream_reconnects"] >= 1 for row in result.cameras)


def test_two_servers_one_killed_its_cameras_move(stream_server, stream_assets, tmp_path):
    other = StreamServer(stream_assets.repository, tmp_path).start()
    try:
        specs = [CameraSpec(f"cam{i}", "synthetic:metal", fps=10) for i in range(4)]
        frames, cameras = 60, {}
        options = StreamOptions(
            servers=(stream_server.url, other.url),
            synthetic_root=stream_assets.synthetic,
            frames=frames,
            window=4,
            maps=False,
        )

        def run():
            return stream(specs, options, tmp_path, started=lambda cs: cameras.update((c.name, c) for c in cs))

        with in_background(run) as future:
            wait_until(lambda: len(cameras) == 4 and min(c.delivered for c in cameras.values()) >= 2, RUN_S, "answers")
            other.kill()
            result = future.result(RUN_S)
    finally:
        other.stop()
    by_camera = assert_exactly_once_in_order(tmp_path, {s.name: frames for s in specs})
    assert all(r["status"] == "ok" for rs in by_camera.values() for r in rs)
    servers = {camera: [r["server"] for r in records] for camera, records in by_camera.items()}
    moved = [c for c, s in servers.items() if s[0] == other.url]
    stayed = [c for c, s in servers.items() if s[0] == stream_server.url]
    assert len(moved) == len(stayed) == 2  # spread over both servers
    for camera in moved:  # answered by the killed server, then by the live one, and never again by the dead one
        first_live = servers[camera].index(stream_server.url)
        assert set(servers[camera][:first_live]) == {other.url}
        assert set(servers[camera][first_live:]) == {stream_server.url}
    assert all(set(servers[c]) == {stream_server.url} for c in stayed)
    rows = {r["camera"]: r for r in result.cameras}
    assert all(rows[c]["moves"] == 1 for c in moved) and all(rows[c]["moves"] == 0 for c in stayed)
    assert result.exit_code == 0 and result.totals["unanswered"] == 0
