"""What serving returns per frame, against expectations that do not come from `Predictor` itself: hand cases for
`finish_frame` (a score and a map value exactly at their thresholds, map strides that leave a remainder), and
`Predictor` against the folded model called directly on the DALI-decoded tensor, with the thresholds and the
stride pooling written out here in numpy. The real server is checked the same way in test_serving.py."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from conftest import TINY
from conftest import make_model
from frame_samples import encode
from frame_samples import jpeg_claiming
from frame_samples import scene
from frame_samples import truncated_jpeg
from frame_samples import undecodable_jpeg
from frame_samples import valid_frames

from pipeline import protocol
from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import save_checkpoint
from pipeline.deploy.preprocess import DaliPreprocessor
from pipeline.deploy.serving import FrameOutput
from pipeline.deploy.serving import Predictor
from pipeline.deploy.serving import anomaly_map_from_logits
from pipeline.deploy.serving import finish_frame
from pipeline.deploy.serving import finish_logits
from pipeline.deploy.serving import served_module
from pipeline.folded import FoldedSSN
from pipeline.frames import FrameError
from pipeline.inference import Thresholds
from pipeline.model import SuperSimpleNet


def block_max(prob: np.ndarray, stride: int) -> np.ndarray:
    """[H, W] -> [ceil(H / s), ceil(W / s)]: the max of every s x s block, the last blocks cut at the border."""
    h, w = prob.shape
    rows, cols = -(-h // stride), -(-w // stride)
    out = np.empty((rows, cols), prob.dtype)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = prob[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride].max()
    return out


# ---- finish_frame: hand cases -------------------------------------------------------------------------------------


def test_label_at_just_below_and_without_the_image_threshold():
    prob = torch.full((1, 4, 4), 0.25)
    at = finish_frame(0.75, prob, Thresholds(image=0.75), 1)
    below = finish_frame(float(np.nextafter(0.75, 0)), prob, Thresholds(image=0.75), 1)
    assert (at.label, below.label) == (1, 0)  # a defect when score >= threshold
    assert finish_frame(0.99, prob, Thresholds(), 1).label == protocol.NO_LABEL == -1
    assert at.score == 0.75


def test_mask_at_and_below_the_pixel_threshold():
    prob = torch.tensor([[[0.5, 0.25], [0.75, 0.4999]]])
    out = finish_frame(0.1, prob, Thresholds(pixel=0.5), 1)
    assert out.anomaly_map.dtype == np.float32 and out.mask.dtype == np.uint8
    assert out.anomaly_map.tolist() == [[0.5, 0.25], [0.75, pytest.approx(0.4999)]]
    assert out.mask.tolist() == [[1, 0], [1, 0]]
    assert finish_frame(0.1, prob, Thresholds(), 1).mask.shape == (0, 0)  # no pixel threshold: no mask
    half = finish_frame(0.1, torch.tensor([[[0.5, 0.25]]], dtype=torch.float16), Thresholds(pixel=0.5), 1)
    assert half.anomaly_map.dtype == np.float32 and half.mask.tolist() == [[1, 0]]  # an fp16 module's map


def test_stride_2_on_an_odd_map_keeps_the_edge_pixels():
    # 5 x 7 -> 3 x 4: the last row and column are blocks of one pixel (ceil), not dropped
    prob = np.zeros((5, 7), np.float32)
    prob[4, 6], prob[4, 0], prob[0, 6], prob[1, 1], prob[2, 3] = 0.9, 0.8, 0.7, 0.6, 0.5
    out = finish_frame(0.2, torch.from_numpy(prob)[None], Thresholds(image=0.5, pixel=0.65), 2)
    expected = [[0.6, 0.0, 0.0, 0.7], [0.0, 0.5, 0.0, 0.0], [0.8, 0.0, 0.0, 0.9]]
    np.testing.assert_array_equal(out.anomaly_map, np.array(expected, np.float32))
    assert out.mask.tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 1]]
    assert out.label == 0


@pytest.mark.parametrize("stride", [3, 5, 7])
def test_stride_with_a_remainder_on_the_model_map_size(stride):
    h, w = TINY.image_size  # 64 x 96: 3 leaves 1 row, 5 leaves 4 rows and 1 column, 7 leaves 1 row and 5 columns
    prob = torch.rand(1, h, w, generator=torch.Generator().manual_seed(stride)) * 0.5
    prob[0, h - 1, w - 1] = 0.95  # the corner pixel is alone in its block for every stride here
    out = finish_frame(0.3, prob, Thresholds(pixel=0.45), stride)
    want = block_max(prob[0].numpy(), stride)
    assert out.anomaly_map.shape == (-(-h // stride), -(-w // stride))
    np.testing.assert_array_equal(out.anomaly_map, want)
    assert out.anomaly_map[-1, -1] == np.float32(0.95)
    np.testing.assert_array_equal(out.mask, (want >= 0.45).astype(np.uint8))


def test_stride_0_sends_no_map_but_keeps_score_and_label():
    out = finish_frame(0.8, torch.rand(1, 8, 8), Thresholds(image=0.5, pixel=0.5), 0)
    assert (out.score, out.label) == (0.8, 1)
    assert out.anomaly_map.shape == (0, 0) and out.anomaly_map.dtype == np.float32
    assert out.mask.shape == (0, 0) and out.mask.dtype == np.uint8


# ---- Predictor against the folded model on the decoded tensor ----------------------------------------------------


@pytest.fixture(scope="module")
def folded():
    return FoldedSSN.from_model(make_model(TINY, map_sigmoid=True)).eval()


def _expected(folded, frames: list[bytes]) -> list[tuple[float, np.ndarray]]:
    """(score, full-size probability map) per frame: DALI decode, then the folded module, one frame at a time."""
    decoder = DaliPreprocessor(TINY, 1)
    out = []
    for data in frames:
        images, errors = decoder([np.frombuffer(data, np.uint8)])
        assert not errors
        with torch.inference_mode():
            pred = folded(images)
        out.append((float(pred.score[0]), pred.anomaly_map[0, 0].numpy()))
    return out


def test_predictor_equals_the_folded_model_on_the_decoded_tensor(folded):
    """Six frames in chunks of 4 with a bad frame among them, each frame with its own map stride."""
    good = list(valid_frames().values())
    expected = _expected(folded, good)
    scores = sorted(score for score, _ in expected)
    image_threshold = (scores[2] + scores[3]) / 2  # between two frames' scores: both labels occur
    pixel_threshold = float(np.median(np.concatenate([m.ravel() for _, m in expected])))
    frames = [*good[:3], truncated_jpeg(), *good[3:5], undecodable_jpeg(), good[5]]
    strides = [1, 3, 0, 2, 5, 4, 1, 1]
    bad = (3, 6)  # refused by the header check; passes it, fails in the decoder
    predictor = Predictor(folded, Thresholds(image_threshold, pixel_threshold), max_batch_size=4)
    results = predictor.predict(frames, strides)
    assert len(results) == 8
    assert isinstance(results[3], FrameError) and "truncated JPEG" in str(results[3])
    assert isinstance(results[6], FrameError) and "could not decode the image" in str(results[6])
    got = [r for k, r in enumerate(results) if k not in bad]
    good_strides = [s for k, s in enumerate(strides) if k not in bad]
    for (score, prob), result, stride in zip(expected, got, good_strides):
        assert isinstance(result, FrameOutput)
        assert result.score == pytest.approx(score, abs=1e-5)
        assert result.label == int(result.score >= image_threshold)
        if stride == 0:
            assert result.anomaly_map.shape == (0, 0) and result.mask.shape == (0, 0)
            continue
        np.testing.assert_allclose(result.anomaly_map, block_max(prob, stride), atol=1e-5)
        np.testing.assert_array_equal(result.mask, (result.anomaly_map >= pixel_threshold).astype(np.uint8))
    assert {r.label for r in got} == {0, 1}
    assert 0 < np.mean([r.mask.mean() for r in got if r.mask.size]) < 1


def test_predictor_default_stride_and_labels_without_thresholds(folded):
    frames = [encode(scene(64, 96, seed=s)) for s in (11, 12)]
    expected = _expected(folded, frames)
    results = Predictor(folded, Thresholds(), max_batch_size=2, map_stride=2).predict(frames)
    for (score, prob), result in zip(expected, results):
        assert result.label == protocol.NO_LABEL and result.mask.shape == (0, 0)
        assert result.score == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(result.anomaly_map, block_max(prob, 2), atol=1e-5)


def test_predictor_takes_padded_rows_and_bytearrays(folded):
    """The python backend hands frames as the zero-padded rows of one uint8 [n, nbytes] array."""
    frames = [encode(scene(64, 96, seed=s)) for s in (15, 16)]
    expected = _expected(folded, frames)
    batch = np.zeros((2, max(map(len, frames)) + 7), np.uint8)
    for row, data in zip(batch, frames):
        row[: len(data)] = np.frombuffer(data, np.uint8)
    results = Predictor(folded, Thresholds()).predict([batch[0], bytearray(frames[1])])
    for (score, prob), result in zip(expected, results):
        assert isinstance(result, FrameOutput) and result.score == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(result.anomaly_map, prob, atol=1e-5)


def test_predictor_serves_a_webp_frame(folded):
    """WebP is one of the formats serving accepts; its file ends with zero bytes of its own."""
    data = encode(scene(64, 96, seed=14), "WEBP")
    (score, prob), *_ = _expected(folded, [data])
    (result,) = Predictor(folded, Thresholds()).predict([data])
    assert isinstance(result, FrameOutput) and result.score == pytest.approx(score, abs=1e-5)
    np.testing.assert_allclose(result.anomaly_map, prob, atol=1e-5)


def test_predictor_applies_its_max_image_pixels(folded):
    """The limit given to the Predictor decides; a frame over it fails alone, before any decoding."""
    small, large = encode(scene(40, 50, seed=1)), encode(scene(90, 120, seed=2))  # 2000 and 10800 pixels
    results = Predictor(folded, Thresholds(), max_image_pixels=5000).predict([small, large, small])
    assert isinstance(results[1], FrameError)
    assert "header claims 120x90" in str(results[1]) and "(max_image_pixels)" in str(results[1])
    assert isinstance(results[0], FrameOutput) and isinstance(results[2], FrameOutput)
    relaxed = Predictor(folded, Thresholds(), max_image_pixels=10800).predict([large])
    assert isinstance(relaxed[0], FrameOutput)
    bomb = Predictor(folded, Thresholds()).predict([jpeg_claiming(9000, 8000)])  # 72 MP > the 64 MP default
    assert isinstance(bomb[0], FrameError) and "over the limit of 64.0 MP" in str(bomb[0])


def test_predictor_from_checkpoint_takes_its_thresholds_and_the_folded_module(tmp_path):
    checkpoint = save_checkpoint(make_model(TINY), tmp_path / "ck.safetensors", "random", thresholds={"image": 0.5})
    model, _ = load_checkpoint(checkpoint, map_sigmoid=True)
    frames = [encode(scene(64, 96, seed=13))]
    (score, prob), *_ = _expected(FoldedSSN.from_model(model).eval(), frames)
    default = Predictor.from_checkpoint(checkpoint)
    assert isinstance(default.module, FoldedSSN) and default.thresholds == Thresholds(image=0.5, pixel=None)
    (result,) = default.predict(frames)
    assert result.score == pytest.approx(score, abs=1e-5) and result.label == int(result.score >= 0.5)
    np.testing.assert_allclose(result.anomaly_map, prob, atol=1e-5)  # map_stride 1 by default: the full map
    chosen = Predictor.from_checkpoint(
        checkpoint, impl="reference", thresholds=Thresholds(pixel=0.6), map_stride=4, max_batch_size=3
    )
    assert isinstance(chosen.module, SuperSimpleNet) and chosen.module.impl == "reference"
    assert chosen.thresholds == Thresholds(pixel=0.6) and chosen.max_batch_size == 3
    (result,) = chosen.predict(frames)
    assert result.label == protocol.NO_LABEL and result.score == pytest.approx(score, abs=1e-4)
    np.testing.assert_allclose(result.anomaly_map, block_max(prob, 4), atol=1e-4)
    np.testing.assert_array_equal(result.mask, (result.anomaly_map >= 0.6).astype(np.uint8))


def test_predictor_torch_threads(folded):
    """0 (default) leaves the process's torch threads alone; a positive number sets them."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Predictor(folded, Thresholds())
        assert torch.get_num_threads() == 2
        Predictor(folded, Thresholds(), torch_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("impl", "sigma"), [(None, 4.0), ("reference", 4.0), ("fast-cpu", 2.0), ("reference", 2.5)])
def test_anomaly_map_from_logits_is_the_models_map(impl, sigma):
    """The ensemble's postprocess step: seg logits -> the model's own anomaly map (probabilities), with the
    config's Gaussian sigma."""
    config = dataclasses.replace(TINY, sigma=sigma)
    model = make_model(config, map_sigmoid=True)
    x = torch.randn(2, 3, *TINY.image_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        feats = model.features(x, need_pooled=not config.adapt_cls_features)
        seg_logits, _ = model.heads(feats.adapted, model.cls_input(feats))
        want = model(x).anomaly_map
        args = () if impl is None else (impl,)
        got = anomaly_map_from_logits(seg_logits, config, *args)
    assert got.shape == want.shape == (2, 1, *TINY.image_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert float(got.min()) >= 0 and float(got.max()) <= 1


# ---- finish_logits: the ensemble's postprocess step, on constant logits ------------------------------------------


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_finish_logits_on_constant_logits_per_row(monkeypatch):
    """A constant seg-logit map upsampled and reflect-blurred stays that constant, so each row's map must be the
    sigmoid of its own constant: that tells the rows apart. fp16 logits (an fp16 engine's) are scored in float32.
    Rows with map stride 0 send no map and skip the map op."""
    from pipeline.deploy import serving

    calls = []
    original = serving.anomaly_map_from_logits
    monkeypatch.setattr(serving, "anomaly_map_from_logits", lambda seg, *a: calls.append(len(seg)) or original(seg, *a))
    score_logits = torch.tensor([[0.0], [2.0], [-1.0], [1.5]], dtype=torch.float16)
    constants = (3.0, -2.0, 0.5, 1.0)
    seg_logits = torch.stack([torch.full((1, 16, 24), c, dtype=torch.float16) for c in constants])
    outputs = serving.finish_logits(score_logits, seg_logits, [0, 1, 2, 5], TINY, Thresholds(0.5, 0.6), "fast-cpu")
    assert calls == [3]  # rows 1, 2 and 3 want a map
    assert [o.score for o in outputs] == pytest.approx([sigmoid(x) for x in (0.0, 2.0, -1.0, 1.5)], abs=1e-6)
    assert [o.label for o in outputs] == [1, 1, 0, 1]  # score >= 0.5
    assert outputs[0].anomaly_map.shape == outputs[0].mask.shape == (0, 0)
    for out, c, shape in zip(outputs[1:], constants[1:], [(64, 96), (32, 48), (13, 20)]):
        assert out.anomaly_map.shape == shape and out.anomaly_map.dtype == np.float32
        np.testing.assert_allclose(out.anomaly_map, sigmoid(c), atol=2e-7)  # float32 math: ~4e-8 off
        assert (out.mask == int(sigmoid(c) >= 0.6)).all() and out.mask.shape == shape
    for impl in ("reference", "fast-cpu"):  # fp16 logits in, float32 probabilities out
        assert anomaly_map_from_logits(seg_logits[:1], TINY, impl).dtype == torch.float32
    calls.clear()
    none = serving.finish_logits(score_logits[:2], seg_logits[:2], [0, 0], TINY, Thresholds(), "reference")
    assert calls == [] and [o.label for o in none] == [protocol.NO_LABEL] * 2


def test_finish_logits_passes_on_its_map_impl():
    seg_logits = torch.zeros(1, 1, 16, 24)
    for impl in ("reference", "fast-cpu"):
        (out,) = finish_logits(torch.zeros(1, 1), seg_logits, [1], TINY, Thresholds(), impl)
        np.testing.assert_allclose(out.anomaly_map, 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="impl='sharp' is unknown"):
        finish_logits(torch.zeros(1, 1), seg_logits, [1], TINY, Thresholds(), "sharp")


# ---- served_module: the module the python-backend model serves ---------------------------------------------------


def test_served_module_torch_runtime(tmp_path):
    save_checkpoint(make_model(TINY), tmp_path / "ck.safetensors", "random")
    folder = str(tmp_path)  # the backend passes a string
    for params in (
        {"checkpoint": "ck.safetensors", "impl": "folded"},
        {"runtime": "", "checkpoint": "ck.safetensors", "impl": "folded"},
    ):
        module = served_module(folder, params)
        assert isinstance(module, FoldedSSN) and module.map_sigmoid
    module = served_module(folder, {"runtime": "torch", "checkpoint": "ck.safetensors", "impl": "reference"}, "cpu")
    assert isinstance(module, SuperSimpleNet) and module.impl == "reference" and module.map_sigmoid


def test_served_module_onnxruntime(tmp_path):
    """A one-node graph with the metadata `ssn export` writes: served under onnxruntime with the threads asked for
    (none asked: torch's thread count)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper

    from pipeline.deploy.onnx_runtime import OnnxModule

    checkpoint = tmp_path / "ck.safetensors"
    checkpoint.write_bytes(b"checkpoint bytes")
    node = helper.make_node("Identity", ["images"], ["score"])
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("images", "score")]
    graph = helper.make_model(helper.make_graph([node], "g", io[:1], io[1:]))
    sha = hashlib.sha256(b"checkpoint bytes").hexdigest()
    helper.set_model_props(graph, {"graph": "full", "config": TINY.to_json(), "checkpoint_sha256": sha})
    onnx.save_model(graph, str(tmp_path / "g.onnx"))
    params = {"runtime": "onnxruntime", "checkpoint": "ck.safetensors", "impl": "folded", "onnx": "g.onnx"}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        module = served_module(str(tmp_path), params)
        assert isinstance(module, OnnxModule) and module.path == tmp_path / "g.onnx" and module.config == TINY
        assert module.session.get_session_options().intra_op_num_threads == 2
        one = served_module(tmp_path, params | {"torch_threads": "1"}, "cpu")
        assert one.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def test_served_module_names_bad_parameters(tmp_path):
    params = {"checkpoint": "model.safetensors", "impl": "folded", "onnx": "model.onnx"}
    with pytest.raises(
        ValueError, match=r"^config parameter runtime='tensorrt' is unknown; accepted: torch, onnxruntime$"
    ):
        served_module(tmp_path, params | {"runtime": "tensorrt"})
    with pytest.raises(
        ValueError, match="^runtime onnxruntime serves on CPU instances only, this instance is on cuda:0$"
    ):
        served_module(tmp_path, params | {"runtime": "onnxruntime"}, "cuda:0")
    for onnx_param in ({"onnx": ""}, {}):
        with pytest.raises(
            ValueError, match=r"^runtime onnxruntime needs the config parameter 'onnx' \(the graph file"
        ):
            served_module(tmp_path, {"runtime": "onnxruntime", "checkpoint": "m.safetensors"} | onnx_param)
