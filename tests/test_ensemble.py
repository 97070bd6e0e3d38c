"""The `supersimplenet` ensemble made by `ssn deploy --target trt`, served by a real tritonserver.

On this CPU host: the bundled Triton 2.51 (release 24.10) runs the ensemble with its python steps on CPU instances
(`preprocess`: header checks + DALI; `postprocess`) and, in place of the TensorRT step, a python model that runs the
same exported ONNX with onnxruntime (tests/triton_models/onnx_split_model.py). Checked: results = the in-process
PyTorch model, a bad frame in a merged batch fails alone, map_stride through the ensemble, the release rules.
On a GPU host inside the NGC image (`-m gpu`, bench/device_check.sh): the same tests on the real TensorRT engine,
DALI "mixed" decode and KIND_GPU instances.

Tolerance against the in-process model: 1e-4 (ONNX parity, tests/test_export.py); 2e-3 for the TensorRT engine.
"""

from __future__ import annotations

import importlib.util
import queue
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import TINY
from conftest import make_model
from frame_samples import encode
from frame_samples import scene
from frame_samples import truncated_jpeg
from frame_samples import undecodable_jpeg
from frame_samples import valid_frames
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from pipeline import protocol
from pipeline.checkpoint import save_checkpoint
from pipeline.deploy import repository as repo
from pipeline.deploy import serving
from pipeline.deploy import triton_release
from pipeline.deploy.deploy import DeployOptions
from pipeline.deploy.deploy import deploy
from pipeline.deploy.export import split_forward
from pipeline.deploy.serving import Predictor
from pipeline.deploy.triton_server import HOST_BINARIES
from pipeline.deploy.triton_server import TritonProcess
from pipeline.inference import Thresholds

MODEL = protocol.ENSEMBLE_MODEL
THRESHOLDS = {"image": 0.99, "pixel": 0.84}
MAX_BATCH = 8
STAND_IN = Path(__file__).parent / "triton_models" / "onnx_split_model.py"


def _gpu_server_missing() -> str:
    missing = [] if torch.cuda.is_available() else ["a CUDA device"]
    missing += [] if importlib.util.find_spec("tensorrt") else ["the tensorrt package"]
    if not (shutil.which("tritonserver") or any(Path(p).is_file() for p in HOST_BINARIES)):
        missing.append("a tritonserver with the tensorrt backend (NGC image)")
    return ", ".join(missing)


GPU = pytest.param(
    "gpu",
    marks=[pytest.mark.gpu, pytest.mark.skipif(bool(_gpu_server_missing()), reason=f"needs {_gpu_server_missing()}")],
)


def _on_cpu_instances(repository: Path) -> None:
    """The python steps on KIND_CPU, the TensorRT step replaced by the onnxruntime stand-in."""
    for name in ("preprocess", "postprocess"):
        config = repo.load_config(repository / name / "config.pbtxt")
        del config.instance_group[:]
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
        if name == "preprocess":  # merges the concurrent requests of a test deterministically on a busy CPU
            config.dynamic_batching.max_queue_delay_microseconds = 100_000
        repo.save_config(config, repository / name / "config.pbtxt")
    config = repo.load_config(repository / "supersimplenet_trt" / "config.pbtxt")
    config.ClearField("platform")
    config.ClearField("optimization")
    config.backend = "python"
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    repo.save_config(config, repository / "supersimplenet_trt" / "config.pbtxt")
    shutil.copy(STAND_IN, repository / "supersimplenet_trt" / "1" / "model.py")


class Ensemble:
    def __init__(self, server: TritonProcess, predictor: Predictor, repository: Path, device: str, notes, log: Path):
        self.predictor, self.repository, self.device, self.notes, self.log = predictor, repository, device, notes, log
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.tol = 1e-4 if device == "cpu" else 2e-3


@pytest.fixture(scope="module", params=["cpu", GPU])
def ensemble(request, tmp_path_factory):
    device = request.param
    tmp = tmp_path_factory.mktemp(f"ensemble-{device}")
    checkpoint = save_checkpoint(make_model(TINY), tmp / "ck.safetensors", "random", thresholds=THRESHOLDS)
    release = "25.10" if device == "cpu" else None  # the GPU host: the release of the NGC image it runs in
    gpu = device == "gpu"
    options = DeployOptions(target="trt", max_batch_size=MAX_BATCH, build_engine=gpu, triton_release=release)
    notes = deploy(checkpoint, tmp / "repo", options)
    if device == "cpu":
        _on_cpu_instances(tmp / "repo")
    explicit = ["--model-control-mode=explicit", "--load-model=*"]
    log = tmp / "server.log"
    server = TritonProcess(tmp / "repo", extra_args=explicit, log_path=log, prefer_bundled=device == "cpu")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu" if device == "cpu" else "cuda", max_batch_size=8)
    with server:
        yield Ensemble(server, predictor, tmp / "repo", device, notes, log)


def _inputs(data: bytes) -> list:
    array = np.frombuffer(data, np.uint8)[None]  # [1, nbytes]
    tensor = grpcclient.InferInput(protocol.INPUT, list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    return [tensor]


def _assert_equal_to_model(result, expected, tol: float) -> None:
    score = result.as_numpy(protocol.SCORE)[0, 0]
    np.testing.assert_allclose(score, expected.score, atol=tol)
    assert result.as_numpy(protocol.LABEL)[0, 0] == int(score >= THRESHOLDS["image"])
    anomaly_map = result.as_numpy(protocol.ANOMALY_MAP)[0]
    np.testing.assert_allclose(anomaly_map, expected.anomaly_map, atol=tol)
    assert np.array_equal(result.as_numpy(protocol.MASK)[0], (anomaly_map >= THRESHOLDS["pixel"]).astype(np.uint8))


def _send_together(ensemble: Ensemble, frames: list[bytes], **kwargs) -> dict[int, tuple]:
    done: queue.Queue = queue.Queue()
    for i, data in enumerate(frames):
        callback = lambda result, error, i=i: done.put((i, result, error))  # noqa: E731
        ensemble.client.async_infer(MODEL, _inputs(data), callback, request_id=f"cam1:{i}", **kwargs)
    return {i: (r, e) for i, r, e in (done.get(timeout=120) for _ in frames)}


def _executions(ensemble: Ensemble, model: str) -> tuple[int, int]:
    stats = ensemble.client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _settled(ensemble: Ensemble, model: str, before: tuple[int, int], inferences: int) -> tuple[int, int]:
    """(inferences, executions) of `model` since `before`, polled until `inferences` are counted (deadline 30 s):
    the server counts a request after it has responded."""
    deadline = time.monotonic() + 30
    while True:
        delta = tuple(a - b for a, b in zip(_executions(ensemble, model), before))
        if delta[0] >= inferences or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def test_ensemble_equals_the_model(ensemble):
    frames = valid_frames()
    expected = ensemble.predictor.predict(list(frames.values()))
    for (name, data), want in zip(frames.items(), expected):
        result = ensemble.client.infer(MODEL, _inputs(data), request_id=f"cam0:{name}")
        assert result.get_response().id == f"cam0:{name}"
        _assert_equal_to_model(result, want, ensemble.tol)


def test_bad_frame_in_a_merged_batch_fails_alone(ensemble):
    """Good and bad frames alternate, so any merge of these requests puts a bad frame in a batch with a good one
    (server statistics: fewer preprocess executions than requests); the bad frames fail, the others are scored."""
    good = [encode(scene(70, 90, seed=60)), valid_frames()["png"]]
    expected = ensemble.predictor.predict(good)
    sent = [good[0], truncated_jpeg(), good[1], undecodable_jpeg()]
    before = _executions(ensemble, "preprocess")
    results = _send_together(ensemble, sent)
    inferences, executions = _settled(ensemble, "preprocess", before, len(sent))
    assert inferences == len(sent) and executions < len(sent), f"{len(sent)} requests ran in {executions} batches"
    assert results[1][0] is None and "frame 0 of 1 in request: truncated JPEG" in str(results[1][1])
    assert results[3][0] is None and "could not decode the image" in str(results[3][1])
    for i, want in ((0, expected[0]), (2, expected[1])):
        assert results[i][1] is None, results[i][1]
        _assert_equal_to_model(results[i][0], want, ensemble.tol)


def test_map_stride_through_the_ensemble(ensemble):
    data = valid_frames()["rgb_jpeg"]
    full = ensemble.predictor.predict([data])[0]
    pooled = ensemble.client.infer(MODEL, _inputs(data), parameters={protocol.MAP_STRIDE: 4})
    want = torch.nn.functional.max_pool2d(torch.from_numpy(full.anomaly_map)[None], 4, ceil_mode=True)[0]
    np.testing.assert_allclose(pooled.as_numpy(protocol.ANOMALY_MAP)[0], want.numpy(), atol=ensemble.tol)
    none = ensemble.client.infer(
        MODEL, _inputs(data), parameters={protocol.MAP_STRIDE: 0}, outputs=[grpcclient.InferRequestedOutput("SCORE")]
    )
    assert none.as_numpy(protocol.ANOMALY_MAP) is None
    np.testing.assert_allclose(none.as_numpy(protocol.SCORE)[0, 0], full.score, atol=ensemble.tol)
    with pytest.raises(InferenceServerException, match="map_stride='x' is invalid"):
        ensemble.client.infer(MODEL, _inputs(data), parameters={protocol.MAP_STRIDE: "x"})


def test_postprocess_skips_the_map_op_for_map_stride_0(monkeypatch):
    """The ensemble asks its last step for every output, so only map_stride tells it the client wants no map."""
    calls = []
    original = serving.anomaly_map_from_logits
    monkeypatch.setattr(serving, "anomaly_map_from_logits", lambda seg, *a: calls.append(len(seg)) or original(seg, *a))
    model = make_model(TINY, map_sigmoid=True)
    x = torch.randn(3, 3, *TINY.image_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        seg_logits, score_logit = split_forward(model, x)
        pred = model(x)
    outputs = serving.finish_logits(score_logit[:, None], seg_logits, [0, 1, 0], TINY, Thresholds(0.5, 0.5), "fast-cpu")
    assert calls == [1]  # one row wanted a map
    assert [o.anomaly_map.shape for o in outputs] == [(0, 0), TINY.image_size, (0, 0)]
    np.testing.assert_allclose(outputs[1].anomaly_map, pred.anomaly_map[1, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose([o.score for o in outputs], pred.score.numpy(), atol=1e-6)
    serving.finish_logits(score_logit[:, None], seg_logits, [0, 0, 0], TINY, Thresholds(None, None), "fast-cpu")
    assert calls == [1]  # no row wanted one: no call


def test_release_rules_on_a_real_older_server(ensemble):
    """Deployed for 25.10 the ensemble has no max_inflight_requests and loads; the field, as a 25.11 repository
    has it, makes Triton 2.51 (release 24.10) refuse the model: its config parser is strict."""
    if ensemble.device != "cpu":
        pytest.skip("the bundled server (24.10) is the older server at hand")
    assert any("no ensemble backpressure" in note for note in ensemble.notes)
    config = repo.load_config(ensemble.repository / MODEL / "config.pbtxt")
    assert not config.ensemble_scheduling.max_inflight_requests and ensemble.client.is_model_ready(MODEL)
    newer = ensemble.repository / "supersimplenet_25_11"
    (newer / "1").mkdir(parents=True)
    config.name = newer.name
    config.ensemble_scheduling.max_inflight_requests = 4 * MAX_BATCH
    repo.save_config(config, newer / "config.pbtxt")
    assert triton_release.config_problems({newer.name: config}, triton_release.BUNDLED)
    with pytest.raises(InferenceServerException, match="failed to load 'supersimplenet_25_11'"):
        ensemble.client.load_model(newer.name)
    reason = 'Message type "inference.ModelEnsembling" has no field named "max_inflight_requests"'
    deadline = time.monotonic() + 30  # the server's log reaches the file on its own time
    while reason not in ensemble.log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reason in ensemble.log.read_text(errors="replace")
    assert ensemble.client.is_model_ready(MODEL)
