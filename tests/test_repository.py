"""Model repository: every config.pbtxt parses into tritonclient's ModelConfig, the ensemble lines up (names, types,
dims), `ssn deploy --target trt` fills it from a checkpoint, and engines that do not match the host are refused."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from checkout import run_ssn
from conftest import make_model
from tritonclient.grpc import model_config_pb2 as mc

from pipeline import protocol
from pipeline.checkpoint import save_checkpoint
from pipeline.config import ModelConfig
from pipeline.config import get_preset
from pipeline.deploy import repository as repo
from pipeline.deploy import triton_release
from pipeline.deploy.deploy import DeployOptions
from pipeline.deploy.deploy import deploy
from pipeline.deploy.trt_engine import engine_problems

CONFIG = ModelConfig(backbone="resnet18", image_size=(96, 64))
HOST = {"tensorrt": "10.13.3.9", "gpu": "NVIDIA H200", "compute_capability": "9.0"}


def test_templates_parse_and_line_up():
    configs = repo.model_configs(repo.TEMPLATES)
    assert set(configs) == {"supersimplenet", "preprocess", "supersimplenet_trt", "postprocess", "supersimplenet_py"}
    assert all(isinstance(c, mc.ModelConfig) and c.max_batch_size == 16 for c in configs.values())
    assert repo.ensemble_problems(configs) == []
    # both entry points have the same interface (pipeline/protocol.py)
    ensemble, portable = configs[protocol.ENSEMBLE_MODEL], configs[protocol.PYTHON_MODEL]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [
        (t.name, t.data_type, list(t.dims)) for t in portable.output
    ]
    assert [t.name for t in portable.output] == list(protocol.OUTPUTS)
    assert ensemble.input[0].name == portable.input[0].name == protocol.INPUT
    # warm-up frames exist and their dims are their sizes
    for name in ("preprocess", "supersimplenet_py"):
        warm = configs[name].model_warmup[0].inputs[protocol.INPUT]
        assert list(warm.dims) == [(repo.TEMPLATES / name / "warmup" / warm.input_data_file).stat().st_size]


def test_templates_are_the_tiny_presets_values():
    """The templates stay valid as they are for the embedded default (its image and feature sizes)."""
    configs = repo.model_configs(repo.TEMPLATES)
    (h, w), (fh, fw) = get_preset("tiny").model.image_size, get_preset("tiny").model.feature_size
    for name in ("preprocess", "postprocess"):
        assert repo.parameters(configs[name])["image_size"] == f"{h},{w}", name
    assert list(repo.tensor(configs["preprocess"], "IMAGES", "output").dims) == [3, h, w]
    assert list(repo.tensor(configs["supersimplenet_trt"], "images", "input").dims) == [3, h, w]
    for name, kind in (("supersimplenet_trt", "output"), ("postprocess", "input")):
        assert list(repo.tensor(configs[name], "seg_logits", kind).dims) == [1, fh, fw], name
    for warm in configs["supersimplenet_trt"].model_warmup:
        assert list(warm.inputs["images"].dims) == [3, h, w]


@pytest.fixture(scope="module")
def trt_repository(tmp_path_factory):
    """`--target trt` without building the engine (no TensorRT here): the ONNX and the four configs."""
    tmp = tmp_path_factory.mktemp("trt")
    checkpoint = save_checkpoint(make_model(CONFIG), tmp / "ck.safetensors", "random", thresholds={"image": 0.7})
    options = DeployOptions(target="trt", max_batch_size=8, map_stride=2, build_engine=False, triton_release="25.11")
    notes = deploy(checkpoint, tmp / "repo", options)
    assert "engine not built" in notes[0] and "python -m pipeline.deploy.trt_engine" in notes[0]
    return tmp / "repo"


def test_deploy_trt_fills_values_from_checkpoint(trt_repository):
    configs = repo.model_configs(trt_repository)
    assert repo.ensemble_problems(configs) == []
    assert {c.max_batch_size for c in configs.values()} == {8}
    fh, fw = CONFIG.feature_size
    assert list(repo.tensor(configs["preprocess"], "IMAGES", "output").dims) == [3, 96, 64]
    assert repo.parameters(configs["preprocess"])["image_size"] == "96,64"
    assert repo.parameters(configs["preprocess"])["std"] == ",".join(str(s) for s in CONFIG.std)
    assert list(repo.tensor(configs["supersimplenet_trt"], "images", "input").dims) == [3, 96, 64]
    assert list(repo.tensor(configs["supersimplenet_trt"], "seg_logits", "output").dims) == [1, fh, fw]
    assert [g.batch_size for g in configs["supersimplenet_trt"].optimization.cuda.graph_spec] == [1, 2, 4, 8]
    assert configs["supersimplenet_trt"].model_warmup[-1].batch_size == 8
    params = repo.parameters(configs["postprocess"])
    assert params["image_size"] == "96,64" and params["image_threshold"] == "0.7" and params["pixel_threshold"] == ""
    assert params["map_stride"] == "2" and params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    assert (trt_repository / "preprocess" / "1" / "model.py").is_file()
    assert configs["supersimplenet"].ensemble_scheduling.max_inflight_requests == 4 * 8  # release 25.11
    assert (trt_repository / "supersimplenet_trt" / "1" / "model.onnx").stat().st_size > 0
    assert (trt_repository / "postprocess" / "1" / "model.py").is_file()
    assert (trt_repository / "supersimplenet" / "1").is_dir()


def test_ensemble_mismatches_are_named(trt_repository):
    configs = repo.model_configs(trt_repository)
    repo.tensor(configs["postprocess"], "seg_logits", "input").dims[:] = [1, 7, 7]
    repo.tensor(configs["postprocess"], "SCORE", "output").data_type = mc.TYPE_FP16
    configs["supersimplenet"].ensemble_scheduling.step[1].output_map["score_logit"] = "logit"
    problems = repo.ensemble_problems(configs)
    text = "\n".join(problems)
    assert "postprocess input 'seg_logits' wants" in text and "supersimplenet_trt output seg_logits gives" in text
    assert "postprocess input 'score_logit' reads 'score_logit', which no step produces" in text
    assert "output 'SCORE' is (" in text


def test_deploy_refuses_to_overwrite(trt_repository, tmp_path):
    checkpoint = save_checkpoint(make_model(CONFIG), tmp_path / "ck.safetensors", "random")
    with pytest.raises(repo.RepositoryError, match="already exists: choose another --out or pass --force"):
        deploy(checkpoint, trt_repository, DeployOptions(target="trt", build_engine=False, triton_release="26.01"))


def _fake_engine(repository: Path, **metadata) -> Path:
    plan = repository / "supersimplenet_trt" / "1" / "model.plan"
    plan.write_bytes(b"not a real engine")
    if metadata:
        plan.with_name("model.plan.json").write_text(json.dumps(metadata))
    return plan


@pytest.mark.parametrize(
    ("built", "host", "reason"),
    [
        (
            {"tensorrt": "10.8.0.43"},
            {},
            "built with TensorRT 10.8.0.43 for NVIDIA H200 (sm 9.0), but this host has TensorRT 10.13.3.9",
        ),
        ({"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, {}, "this host's GPU NVIDIA H200 is sm 9.0"),
        ({}, {"tensorrt": None}, "cannot tell this host's TensorRT version"),
        ({}, {"gpu": None, "compute_capability": None}, "no GPU found on this host"),
    ],
    ids=["trt-version", "gpu-arch", "unknown-trt", "no-gpu"],
)
def test_engine_metadata_mismatch_is_refused(built, host, reason):
    refuse, _ = engine_problems(HOST | built, HOST | host)
    assert any(reason in r for r in refuse), refuse


def test_engine_checks_on_a_repository(trt_repository):
    plan = _fake_engine(trt_repository, **(HOST | {"tensorrt": "11.4.0.106"}))
    try:
        problems, _ = repo.serving_problems(trt_repository, bundled_server=False, host=HOST)
        assert problems == [
            "supersimplenet_trt/1/model.plan: engine built with TensorRT 11.4.0.106 for NVIDIA H200 (sm 9.0), "
            "but this host has TensorRT 10.13.3.9; rebuild it on this host"
        ]
        plan.with_name("model.plan.json").write_text(json.dumps(HOST | {"gpu": "NVIDIA H100 80GB HBM3"}))
        problems, warnings = repo.serving_problems(trt_repository, bundled_server=False, host=HOST)
        assert problems == [] and "runs on NVIDIA H200 (same architecture" in warnings[0]
        plan.with_name("model.plan.json").unlink()
        problems, _ = repo.serving_problems(trt_repository, bundled_server=False, host=HOST)
        assert "has no metadata file model.plan.json" in problems[0]
    finally:
        plan.unlink()


def test_serve_refuses_what_the_bundled_server_cannot_load(trt_repository):
    """No tritonserver on this host's PATH: `ssn serve` uses the bundled one (python backend only) and says so."""
    out = run_ssn("serve", "--model-repository", str(trt_repository), "--bundled", timeout=120)
    assert out.returncode == 2
    assert "model 'supersimplenet_trt' needs the 'tensorrt_plan' backend" in out.stderr and "--target py" in out.stderr
    assert "model 'preprocess'" not in out.stderr  # a python step: the bundled server can run it
    # the bundled server is release 24.10: the ensemble's backpressure field is refused before starting it
    assert "sets ensemble_scheduling.max_inflight_requests, which tritonserver 24.10 cannot parse" in out.stderr


def test_missing_tensorrt_is_explained():
    import importlib.util

    from pipeline.deploy.trt_engine import EngineError
    from pipeline.deploy.trt_engine import import_tensorrt

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: tests/test_trt_engine.py builds real engines")
    with pytest.raises(EngineError, match=r"tensorrt.*not importable.*nvcr.io/nvidia/tensorrt:<yy.mm>-py3"):
        import_tensorrt()


def test_verify_command_on_this_host(trt_repository, capsys):
    """`python -m pipeline.deploy.trt_engine verify` (run in the serving container) on a host without TensorRT/GPU."""
    from pipeline.deploy.trt_engine import main

    plan = _fake_engine(trt_repository, **HOST)
    try:
        assert main(["verify", str(plan)]) == 1
    finally:
        plan.unlink()
    out = capsys.readouterr().out
    assert "refused: cannot tell this host's TensorRT version" in out and "refused: no GPU found" in out


def test_deployed_repository_carries_no_machine_path(trt_repository):
    """`--target trt --no-engine` output can be copied to the serving host: no path of this checkout, its
    environment or the checkpoint's folder in any file (the ONNX exporter's stack traces held them)."""
    machine_paths = {str(repo.TEMPLATES.parent), sys.prefix, str(trt_repository.parent)}
    for path in sorted(p for p in trt_repository.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not [m for m in machine_paths if m.encode() in data], path.relative_to(trt_repository)


def test_triton_release_is_checked(trt_repository, tmp_path, monkeypatch):
    monkeypatch.delenv(triton_release.RELEASE_ENV, raising=False)
    checkpoint = save_checkpoint(make_model(CONFIG), tmp_path / "ck.safetensors", "random")
    options = DeployOptions(target="trt", build_engine=False)
    with pytest.raises(triton_release.ReleaseError, match="--triton-release YY.MM is required for --target trt"):
        deploy(checkpoint, tmp_path / "repo", options)
    with pytest.raises(triton_release.ReleaseError, match="24.10 is older than the minimum 24.11"):
        deploy(checkpoint, tmp_path / "repo", replace(options, triton_release="24.10"))
    with pytest.raises(triton_release.ReleaseError, match="'25.1' is not an NGC release: use YY.MM"):
        deploy(checkpoint, tmp_path / "repo", replace(options, triton_release="25.1"))
    monkeypatch.setenv(triton_release.RELEASE_ENV, "25.02")  # inside an NGC tritonserver image
    assert triton_release.deploy_release(None) == "25.02"
    assert not triton_release.allows_max_inflight_requests("25.10")
    assert triton_release.allows_max_inflight_requests("25.11")
    # a repository written for 25.11 is refused for an older server, with what to do
    problems, _ = repo.serving_problems(trt_repository, bundled_server=False, host=HOST, release="25.10")
    assert problems == [
        "model 'supersimplenet' sets ensemble_scheduling.max_inflight_requests, which tritonserver 25.10 cannot "
        "parse (added in 25.11): redeploy with --triton-release 25.10"
    ]
    assert repo.serving_problems(trt_repository, bundled_server=False, host=HOST, release="26.01")[0] == []
