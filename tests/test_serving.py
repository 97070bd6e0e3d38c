"""A real tritonserver (started by `ssn serve` on free loopback ports) serving `supersimplenet_py` from a repository
made by `ssn deploy`: health, results equal to in-process inference, dynamic batching, bad input, clean stop.

The repository is `ssn deploy --target py`'s default on CPU: the folded graph exported to ONNX, run by onnxruntime
inside the python model. Tolerance: served vs in-process PyTorch `Predictor` (the same DALI decode, the module as
PyTorch, other batch compositions): 1e-4 on scores and maps (the fp32 export tolerance); labels and mask pixels equal
wherever the in-process value is more than that from its threshold. Served vs the Pillow path of `ssn infer`
(another JPEG decoder): see test_preprocess.py for the input difference; here scores within 1e-3 and maps within
5e-3 (measured: 1e-5 and 7e-4).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from checkout import SSN
from checkout import checkout_env
from conftest import TINY
from conftest import make_model
from frame_samples import encode
from frame_samples import jpeg_claiming
from frame_samples import random_bytes
from frame_samples import scene
from frame_samples import truncated_jpeg
from frame_samples import undecodable_jpeg
from frame_samples import valid_frames
from test_serving_outputs import block_max
from tritonclient.utils import InferenceServerException

from pipeline import protocol
from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import save_checkpoint
from pipeline.deploy.deploy import DeployOptions
from pipeline.deploy.deploy import deploy_postprocess
from pipeline.deploy.export import split_forward
from pipeline.deploy.preprocess import DaliPreprocessor
from pipeline.deploy.serving import Predictor
from pipeline.deploy.triton_server import Ports
from pipeline.folded import FoldedSSN
from pipeline.images import load_image
from pipeline.inference import Thresholds

MODEL = protocol.PYTHON_MODEL
THRESHOLDS = {"image": 0.99, "pixel": 0.84}  # this random model: scores 0.97-0.995, map median 0.84
MAX_BATCH = 8
ATOL = 1e-4  # served onnxruntime graph vs in-process PyTorch (pipeline/deploy/export.py TOLERANCES["fp32"])


class Served:
    def __init__(self, process: subprocess.Popen, ports: Ports, checkpoint: Path, log: Path):
        self.process, self.ports, self.checkpoint, self.log = process, ports, checkpoint, log
        self.url = f"127.0.0.1:{ports.grpc}"
        self.client = grpcclient.InferenceServerClient(self.url)


def _wait_for_line(process: subprocess.Popen, marker: str, timeout: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"`ssn serve` did not print {marker!r}: {''.join(seen)}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    checkpoint = save_checkpoint(make_model(TINY), tmp / "ck.safetensors", "random", thresholds=THRESHOLDS)
    # a long queue delay makes the merge of concurrent requests deterministic on a busy 2-core machine
    deploy = [*SSN, "deploy", "--checkpoint", str(checkpoint), "--target", "py", "--out", str(tmp / "repo")]
    out = subprocess.run(
        [*deploy, "--max-batch-size", str(MAX_BATCH), "--queue-delay-us", "100000"],
        capture_output=True,
        text=True,
        timeout=300,
        env=checkout_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "impl folded on onnxruntime" in out.stdout  # the CPU default: the ONNX graph under onnxruntime
    # the ensemble's python step too, on a CPU instance: the bundled server can run it
    options = DeployOptions(max_batch_size=MAX_BATCH)
    deploy_postprocess(tmp / "repo", TINY, Thresholds(**THRESHOLDS), options, kind="KIND_CPU")
    ports = Ports.free()
    log = tmp / "server.log"
    command = [
        *SSN,
        "serve",
        "--model-repository",
        str(tmp / "repo"),
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
        "--log",
        str(log),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=checkout_env()
    )
    try:
        ready = _wait_for_line(process, "ready:", timeout=240)
        assert f"gRPC 127.0.0.1:{ports.grpc}" in ready and f"http://127.0.0.1:{ports.http}" in ready
        assert f"metrics http://127.0.0.1:{ports.metrics}/metrics" in ready
        yield Served(process, ports, checkpoint, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the server dies with its parent (PR_SET_PDEATHSIG)
                process.wait()


@pytest.fixture(scope="module")
def predictor(served):
    return Predictor.from_checkpoint(served.checkpoint, max_batch_size=MAX_BATCH)


def _inputs(data: bytes, name: str = protocol.INPUT, dtype: str = "UINT8") -> list:
    array = np.frombuffer(data, np.uint8)[None]  # [1, nbytes]
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array if dtype == "UINT8" else array.astype(np.float32))
    return [tensor]


def _infer(served: Served, data: bytes, **kwargs):
    return served.client.infer(MODEL, _inputs(data), **kwargs)


def _assert_same(result, expected, atol=ATOL):
    assert result.as_numpy(protocol.SCORE).shape == (1, 1)
    np.testing.assert_allclose(result.as_numpy(protocol.SCORE)[0, 0], expected.score, atol=atol, rtol=0)
    assert expected.label == int(expected.score >= THRESHOLDS["image"])
    if abs(expected.score - THRESHOLDS["image"]) > atol:  # a score within atol of the threshold may go either way
        assert result.as_numpy(protocol.LABEL)[0, 0] == expected.label
    np.testing.assert_allclose(result.as_numpy(protocol.ANOMALY_MAP)[0], expected.anomaly_map, atol=atol, rtol=0)
    mask = result.as_numpy(protocol.MASK)[0]
    clear = np.abs(expected.anomaly_map - THRESHOLDS["pixel"]) > atol
    assert mask.dtype == np.uint8 and mask.shape == expected.mask.shape
    assert np.array_equal(mask[clear], expected.mask[clear]) and clear.mean() > 0.9


def test_health_and_metadata(served):
    assert "supersimplenet_py: impl folded as OnnxModule (onnxruntime) on cpu" in served.log.read_text()
    assert served.client.is_server_live() and served.client.is_server_ready() and served.client.is_model_ready(MODEL)
    with urllib.request.urlopen(f"http://127.0.0.1:{served.ports.http}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    meta = served.client.get_model_metadata(MODEL, as_json=True)
    assert [i["name"] for i in meta["inputs"]] == [protocol.INPUT]
    assert [o["name"] for o in meta["outputs"]] == list(protocol.OUTPUTS)
    with urllib.request.urlopen(f"http://127.0.0.1:{served.ports.metrics}/metrics", timeout=10) as r:
        assert b"nv_inference_count" in r.read()


def test_batch_1_equals_in_process(served, predictor, tmp_path):
    frames = valid_frames()
    expected = predictor.predict(list(frames.values()))
    for (name, data), want in zip(frames.items(), expected):
        result = _infer(served, data, request_id=f"cam0:{name}")
        assert result.get_response().id == f"cam0:{name}"
        _assert_same(result, want)
        # and close to the Pillow path of `ssn infer` (another JPEG decoder, see the module docstring)
        (tmp_path / name).write_bytes(data)
        _, x = load_image(tmp_path / name, TINY)
        with torch.inference_mode():
            pil = predictor.module(x)
        assert abs(float(pil.score[0]) - want.score) < 1e-3, name
        assert np.abs(pil.anomaly_map[0, 0].numpy() - want.anomaly_map).max() < 5e-3, name
    assert {w.label for w in expected} == {0, 1}  # the thresholds split these frames
    assert 0 < np.mean([w.mask.mean() for w in expected]) < 1


def test_served_equals_the_folded_model_on_the_decoded_tensor(served):
    """An expectation without Predictor: DALI decode, the folded model built from the checkpoint and called
    directly, the thresholds and a stride-3 block max (64 x 96 leaves a row) written out in numpy."""
    model, _ = load_checkpoint(served.checkpoint, map_sigmoid=True)
    folded = FoldedSSN.from_model(model).eval()
    decoder = DaliPreprocessor(TINY, 1)
    for name, data in valid_frames().items():
        images, errors = decoder([np.frombuffer(data, np.uint8)])
        assert not errors, name
        with torch.inference_mode():
            pred = folded(images)
        score, prob = float(pred.score[0]), pred.anomaly_map[0, 0].numpy()
        result = _infer(served, data)
        got = float(result.as_numpy(protocol.SCORE)[0, 0])
        assert got == pytest.approx(score, abs=1e-5), name
        assert result.as_numpy(protocol.LABEL)[0, 0] == int(got >= THRESHOLDS["image"])
        if abs(score - THRESHOLDS["image"]) > 1e-5:
            assert int(got >= THRESHOLDS["image"]) == int(score >= THRESHOLDS["image"]), name
        served_map = result.as_numpy(protocol.ANOMALY_MAP)[0]
        np.testing.assert_allclose(served_map, prob, atol=1e-5)
        assert np.array_equal(result.as_numpy(protocol.MASK)[0], (served_map >= THRESHOLDS["pixel"]).astype(np.uint8))
        pooled = _infer(served, data, parameters={protocol.MAP_STRIDE: 3}).as_numpy(protocol.ANOMALY_MAP)[0]
        np.testing.assert_allclose(pooled, block_max(prob, 3), atol=1e-5)


def _stats(served: Served) -> tuple[int, int]:
    stats = served.client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _settled_stats(served: Served, before: tuple[int, int], inferences: int, timeout: float = 30.0) -> tuple[int, int]:
    """(inferences, executions) since `before`, polled until `inferences` are counted or the deadline passes: the
    server counts a request after it has sent the response, so a read right after the last response can miss it."""
    deadline = time.monotonic() + timeout
    while True:
        delta = tuple(a - b for a, b in zip(_stats(served), before))
        if delta[0] >= inferences or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def test_concurrent_requests_are_merged_by_dynamic_batching(served, predictor):
    frames = [encode(scene(60 + 7 * i, 90, seed=20 + i)) for i in range(MAX_BATCH)]
    expected = predictor.predict(frames)
    done: queue.Queue = queue.Queue()
    before = _stats(served)
    for i, data in enumerate(frames):
        served.client.async_infer(
            MODEL, _inputs(data), lambda result, error, i=i: done.put((i, result, error)), request_id=str(i)
        )
    results = dict((i, (r, e)) for i, r, e in (done.get(timeout=120) for _ in frames))
    inferences, executions = _settled_stats(served, before, MAX_BATCH)
    for i, (result, error) in results.items():
        assert error is None, error
        assert result.get_response().id == str(i)
        _assert_same(result, expected[i])
    assert inferences == MAX_BATCH
    assert executions < MAX_BATCH, f"{MAX_BATCH} requests ran in {executions} executions: not merged"


def test_map_stride_and_requested_outputs(served, predictor):
    data = valid_frames()["png"]
    full = predictor.predict([data])[0]
    pooled = _infer(served, data, parameters={protocol.MAP_STRIDE: 4})
    want = torch.nn.functional.max_pool2d(torch.from_numpy(full.anomaly_map)[None], 4, ceil_mode=True)[0]
    np.testing.assert_allclose(pooled.as_numpy(protocol.ANOMALY_MAP)[0], want.numpy(), atol=ATOL, rtol=0)
    assert pooled.as_numpy(protocol.MASK).shape == (1, *want.shape)
    none = _infer(served, data, parameters={protocol.MAP_STRIDE: 0})
    assert none.as_numpy(protocol.ANOMALY_MAP).shape == (1, 0, 0) and none.as_numpy(protocol.MASK).shape == (1, 0, 0)
    only = _infer(served, data, outputs=[grpcclient.InferRequestedOutput(protocol.SCORE)])
    assert only.as_numpy(protocol.ANOMALY_MAP) is None and only.as_numpy(protocol.SCORE)[0, 0] == pytest.approx(
        full.score, abs=ATOL
    )


BAD_FRAMES = {
    "truncated_jpeg": (truncated_jpeg(), "truncated JPEG: no end-of-image marker"),
    "zero_length": (b"", "frame is empty"),
    "random_bytes": (random_bytes(), "is not a supported image"),
    "bomb_20000x20000": (jpeg_claiming(20000, 20000), "header claims 20000x20000"),
    "undecodable": (undecodable_jpeg(), "could not decode the image"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_gets_an_error_and_server_stays_up(served, case):
    data, message = BAD_FRAMES[case]
    with pytest.raises(InferenceServerException, match=message):
        _infer(served, data)
    assert served.client.is_server_live()
    assert _infer(served, valid_frames()["rgb_jpeg"]).as_numpy(protocol.SCORE).shape == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "JPEG"}, "unexpected inference input 'JPEG'"),
        ({"dtype": "FP32"}, "data-type is 'FP32', but model 'supersimplenet_py' expects 'UINT8'"),
    ],
    ids=["wrong-name", "wrong-dtype"],
)
def test_wrong_input_name_or_dtype(served, kwargs, message):
    with pytest.raises(InferenceServerException, match=message):
        served.client.infer(MODEL, _inputs(valid_frames()["png"], **kwargs))
    with pytest.raises(InferenceServerException, match="map_stride='x' is invalid"):
        _infer(served, valid_frames()["png"], parameters={protocol.MAP_STRIDE: "x"})
    assert _infer(served, valid_frames()["png"]).as_numpy(protocol.LABEL).shape == (1, 1)


def test_bad_frame_in_a_merged_batch_fails_alone(served, predictor):
    good = [valid_frames()["rgb_jpeg"], valid_frames()["bmp"]]
    expected = predictor.predict(good)
    sent = [good[0], truncated_jpeg(), undecodable_jpeg(), good[1]]
    done: queue.Queue = queue.Queue()
    for i, data in enumerate(sent):
        served.client.async_infer(MODEL, _inputs(data), lambda result, error, i=i: done.put((i, result, error)))
    results = dict((i, (r, e)) for i, r, e in (done.get(timeout=120) for _ in sent))
    _assert_same(results[0][0], expected[0])
    _assert_same(results[3][0], expected[1])
    assert "truncated JPEG" in str(results[1][1]) and "could not decode" in str(results[2][1])


def test_stream_keeps_order_and_request_ids(served):
    """What the camera client will do: one gRPC stream, request ids camera:frame, responses in order."""
    client = grpcclient.InferenceServerClient(served.url)
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        ids = [f"cam7:{n}" for n in range(5)]
        for n, request_id in enumerate(ids):
            client.async_stream_infer(MODEL, _inputs(encode(scene(80, 80, seed=40 + n))), request_id=request_id)
        replies = [got.get(timeout=120) for _ in ids]
    finally:
        client.stop_stream()
    assert [r.get_response().id for r, e in replies] == ids and all(e is None for _, e in replies)


def test_ensemble_postprocess_step_equals_model(served, predictor):
    """The ensemble's python step, fed what its TensorRT step computes (the split graph), gives the model's outputs."""
    x = torch.randn(3, 3, *TINY.image_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        seg_logits, score_logit = split_forward(predictor.module, x)
        pred = predictor.module(x)
    inputs = []
    for name, value in (("score_logit", score_logit[:, None]), ("seg_logits", seg_logits)):
        inputs.append(grpcclient.InferInput(name, list(value.shape), "FP32"))
        inputs[-1].set_data_from_numpy(value.numpy())
    result = served.client.infer("postprocess", inputs)
    np.testing.assert_allclose(result.as_numpy(protocol.SCORE)[:, 0], pred.score.numpy(), atol=1e-5)
    want_labels = (pred.score.numpy() >= THRESHOLDS["image"]).astype(np.int32)
    assert np.array_equal(result.as_numpy(protocol.LABEL)[:, 0], want_labels)
    np.testing.assert_allclose(result.as_numpy(protocol.ANOMALY_MAP), pred.anomaly_map[:, 0].numpy(), atol=1e-5)
    want_mask = result.as_numpy(protocol.ANOMALY_MAP) >= THRESHOLDS["pixel"]
    assert np.array_equal(result.as_numpy(protocol.MASK), want_mask.astype(np.uint8))


def test_serve_stops_cleanly_on_sigterm(served):
    """Last: SIGTERM to `ssn serve` stops tritonserver (exit 0) and frees the ports."""
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{served.ports.http}/v2/health/live", timeout=5)
