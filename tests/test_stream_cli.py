"""`ssn stream` as a user runs it, in a process where torch cannot be imported (the camera side's promise), against
the session's real tritonserver: a synthetic camera, a video file and an image folder; results.jsonl, overlays of
the frames labelled defective, the alarm command, the summary. The modules it loaded all come from the `camera`
extra. And bad input: a clear message naming the problem and the exit status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from frame_samples import encode
from frame_samples import scene
from packaging.requirements import Requirement
from test_stream_sources import write_video

from pipeline.deploy.triton_server import free_ports
from pipeline.stream.sinks import read_records

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "triton", "nvidia", "training", "kernels", "pipeline.deploy", "pipeline.model")
BLOCKED += ("scipy", "sklearn", "onnx", "onnxruntime", "safetensors", "matplotlib")
# runs `ssn` with every import of BLOCKED failing, then prints the top-level modules it had loaded
RUN_SSN = f"""
import importlib.abc, json, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
            raise ImportError(f"{{name}} is blocked in this test (the camera side must not need it)")
sys.meta_path.insert(0, Blocked())
before = {{m.split(".")[0] for m in sys.modules}}  # the interpreter's own (site, .pth hooks)
from pipeline.cli import main
code = main(sys.argv[1:])
print("LOADED " + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} - before)), flush=True)
sys.exit(code)
"""


def ssn_stream(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", RUN_SSN, "stream", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def camera_extra_closure() -> tuple[set[str], set[str]]:
    """(the `camera` extra's distributions, those plus everything they require, installed extras included)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["camera"]
    direct = [Requirement(r) for r in extra]
    seen: set[str] = set()
    todo = [(r.name, set(r.extras)) for r in direct]
    while todo:
        name, extras = todo.pop()
        key = _key(name)
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((req.name, set(req.extras)))
    return {_key(r.name) for r in direct}, seen


def test_ssn_stream_runs_without_torch_and_writes_every_sink(stream_server, stream_assets, tmp_path):
    write_video(tmp_path / "belt.mp4", 12, size=(64, 48))
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(5):
        (folder / f"{k}.jpg").write_bytes(encode(scene(40, 60, seed=k)))
    alarms = tmp_path / "alarms.jsonl"
    alarm = f"{sys.executable} -c \"import sys; open({str(alarms)!r}, 'a').write(sys.stdin.read() + '\\n')\""
    out = tmp_path / "out"
    run = ssn_stream(
        *("--server", stream_server.url, "--synthetic-root", str(stream_assets.synthetic), "--out", str(out)),
        *("--camera", "line=synthetic:metal", "--camera", f"belt={tmp_path / 'belt.mp4'}", "--camera", f"dir={folder}"),
        *("--frames", "12", "--fps", "30", "--alarm-command", alarm, "--map-stride", "2"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    loaded = set(json.loads(run.stdout.split("LOADED ", 1)[1]))
    assert not loaded & {"torch", "torchvision", "training", "scipy", "sklearn"}
    records = read_records(out / "results.jsonl")
    counts = {c: sum(r["camera"] == c for r in records) for c in ("line", "belt", "dir")}
    assert counts == {"line": 12, "belt": 12, "dir": 5} and all(r["status"] == "ok" for r in records)
    assert [r["name"] for r in records if r["camera"] == "belt"] == [f"frame {k}" for k in range(12)]
    defective = {(r["camera"], r["seq"]) for r in records if r["label"] == 1}
    assert defective and len(defective) < len(records)  # the threshold splits the frames
    overlays = {(p.parent.name, int(p.stem)) for p in (out / "overlays").rglob("*.png")}
    assert overlays == defective
    raised = {(r["camera"], r["seq"]) for r in read_records(alarms)}
    assert raised == defective
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["frames"] == 29 and summary["totals"]["frames_with_truth"] == 12
    for text in ("stream summary", "29 frames answered", "streamed image AUROC", "results.jsonl", "overlays"):
        assert text in run.stdout
    # every third-party module it loaded is installed by the camera extra, and each of those is used
    distributions = metadata.packages_distributions()
    used = {_key(d) for m in loaded - set(sys.stdlib_module_names) for d in distributions.get(m, [])}
    direct, closure = camera_extra_closure()
    assert used - {"supersimplenet"} <= closure, f"not in the camera extra: {used - closure - {'supersimplenet'}}"
    assert direct <= used, f"in the camera extra but not needed: {direct - used}"


def test_bad_input_is_named_with_the_exit_status(stream_server, stream_assets, tmp_path):
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    synth = ("--synthetic-root", str(stream_assets.synthetic))
    cases = [
        (["--camera", "nosource"], 2, "expected NAME=SOURCE"),
        (["--camera", "a=synthetic:metal", "--camera", "a=synthetic:metal"], 2, "'a' is given twice"),
        (["--camera", "a=synthetic:metal", "--model", "nope"], 2, "has no model 'nope' (it has: supersimplenet_py"),
        (["--camera", "a=synthetic:metal", "--tls-root-cert", str(tmp_path / "bad.pem")], 2, "does not load as a"),
        (["--camera", "a=synthetic:metal", "--tls-root-cert", str(tmp_path / "no.pem")], 2, "no.pem': no such file"),
        (["--camera", "a=synthetic:metal", "--tls-client-key", str(tmp_path / "bad.pem")], 2, "go together"),
        (["--camera", f"a={tmp_path / 'absent'}"], 2, "no camera could start"),
    ]
    for args, code, message in cases:
        run = ssn_stream("--server", stream_server.url, *synth, *args, "--frames", "3", timeout=120)
        assert run.returncode == code and message in run.stderr, (args, run.returncode, run.stderr)
    run = ssn_stream("--server", closed, "--camera", "a=synthetic:metal", *synth, "--connect-timeout", "1")
    assert run.returncode == 2 and f"server {closed}: cannot reach tritonserver" in run.stderr, run.stderr


@pytest.mark.parametrize("bad", ["synthetic:wood", "{tmp}/missing", "{tmp}/empty"])
def test_a_camera_that_cannot_run_fails_alone(stream_server, stream_assets, tmp_path, bad):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    cameras = ("--camera", "good=synthetic:metal", "--camera", "bad=" + bad.format(tmp=tmp_path))
    run = ssn_stream(
        "--server",
        stream_server.url,
        "--synthetic-root",
        str(stream_assets.synthetic),
        *cameras,
        "--frames",
        "4",
        "--out",
        str(out),
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "camera bad:" in run.stderr and "problem: camera bad:" in run.stdout
    assert [(r["camera"], r["seq"], r["status"]) for r in read_records(out / "results.jsonl")] == [
        ("good", k, "ok") for k in range(4)
    ]


def test_second_server_down_at_start_is_reported(stream_server, stream_assets, tmp_path):
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    run = ssn_stream(
        *("--server", stream_server.url, "--server", closed, "--connect-timeout", "1", "--give-up", "300"),
        *("--synthetic-root", str(stream_assets.synthetic), "--camera", "a=synthetic:metal", "--camera"),
        *("b=synthetic:metal", "--frames", "5", "--out", str(tmp_path)),
    )
    assert run.returncode == 1 and f"warning: server {closed}: cannot reach" in run.stderr, run.stderr
    records = read_records(tmp_path / "results.jsonl")
    assert len(records) == 10 and {r["server"] for r in records} == {stream_server.url}  # b moved to the live one
