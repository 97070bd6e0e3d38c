"""CPU providers of bench/throughput.py: onnxruntime (= reference within the fp32 export tolerance), the anomalib
peer (equal to reference before it is timed; skipped with one line when absent), bf16 refusal on CPUs without it,
the GEMM-rate probe's shapes, and the bf16 label-flip count. Timings are printed, never asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from conftest import make_model

from bench import bf16_labels
from bench import cpu_probe
from pipeline.backbone import Backbone
from pipeline.config import get_preset
from pipeline.deploy.export import TOLERANCES
from pipeline.inference import Thresholds
from pipeline.stats import model_stats

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e '.[peers]' (anomalib 2.7.0)"
THROUGHPUT = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--warmup", "0", "--repeats", "1"]


def _bench(tmp_path, *args, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    out = subprocess.run(
        [*THROUGHPUT, *args, "--json", str(tmp_path / "tp.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out, json.loads((tmp_path / "tp.json").read_text())


def test_onnxruntime_provider_equals_reference(tmp_path):
    """Batch 1 and 3: the exported folded graph under onnxruntime gives reference's outputs (score logit, score,
    map) within the fp32 export tolerance; its stages are timed; the GEMM probe and the limit table follow."""
    out, data = _bench(tmp_path, "--batch", "1", "3", "--providers", "reference", "onnxruntime")
    assert data["providers"] == ["reference", "onnxruntime"]
    keys = {(r["provider"], r["batch"], r["stage"]) for r in data["results"] if "median_ms" in r}
    assert {("onnxruntime", b, s) for b in (1, 3) for s in ("seg+score", "e2e")} <= keys
    diffs = [r for r in data["results"] if r["stage"] == "max_diff"]
    assert [r["batch"] for r in diffs] == [1, 3]
    assert all(r["provider"] == "reference|onnxruntime" and r["abs"] <= TOLERANCES["fp32"] for r in diffs)
    assert "onnxruntime: 2 intra-op threads" in out.stdout and "session full" in out.stdout
    assert "GEMM probe, batch 3 (resnet18 convs as GEMMs" in out.stdout and "% of fp32 GEMM rate" in out.stdout
    rates = data["limits"]["rates"]["fp32"]
    assert set(rates) == {"1", "3"} and all(r > 0 for r in rates.values())


def test_anomalib_absent_is_skipped_with_one_line(tmp_path):
    """Without anomalib the peer is skipped with one line naming the extra; the rest of the run is unchanged."""
    shim = tmp_path / "shim" / "anomalib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'anomalib'\")\n")
    env = os.environ | {"PYTHONPATH": str(shim.parent)}
    out, data = _bench(tmp_path, "--batch", "1", "--providers", "reference", "anomalib", "--no-probe", env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("anomalib")]
    assert lines == [f"anomalib: skipped: anomalib is not installed (No module named 'anomalib'); {INSTALL}"]
    assert data["providers"] == ["reference"]
    assert {r["provider"] for r in data["results"] if "median_ms" in r} == {"reference"}


@pytest.mark.parametrize("adapt_cls_features", [False, True], ids=["JIMS", "ICPR"])
def test_anomalib_peer_equals_reference(adapt_cls_features):
    """Our weights in anomalib's model give our outputs within 1e-4 (batch 1 and 3); the check catches a mismatch."""
    pytest.importorskip("anomalib", reason=f"optional peer not installed: {INSTALL}")
    from bench import peer_anomalib

    config = peer_anomalib.peer_config(dataclasses.replace(TINY, adapt_cls_features=adapt_cls_features))
    model = make_model(config, map_sigmoid=True)
    peer = peer_anomalib.build_peer(model)
    x = torch.randn(3, 3, *config.image_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours, theirs = model(x), peer(x)
    torch.testing.assert_close(theirs.score, ours.score, atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs.anomaly_map, ours.anomaly_map, atol=1e-4, rtol=0)
    assert peer_anomalib.check_equal(peer, model, x[:1]) <= 1e-4
    model.config = dataclasses.replace(config, align_corners=True)  # ours now computes something else
    with pytest.raises(peer_anomalib.PeerMismatch, match="differs from reference by"):
        peer_anomalib.check_equal(peer, model, x)


def test_cpu_info_and_bf16_refusal(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Old Xeon\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t: amx_bf16\n"
    )
    info = cpu_probe.cpu_info(cpuinfo)
    assert info == {"model": "Old Xeon", "flags": {"fpu", "avx2", "avx512f"}}  # the first CPU's flags
    problem = cpu_probe.bf16_problem(info)
    assert "this CPU (Old Xeon) has neither AVX512-BF16 nor AMX-BF16" in problem and "run --dtype fp32" in problem
    assert cpu_probe.bf16_problem({"model": "x", "flags": {"amx_bf16"}}) is None
    assert cpu_probe.bf16_problem({"model": "x", "flags": {"avx512_bf16"}}) is None


def test_gemm_probe_shapes_are_the_backbone_convs():
    """The probe's GEMMs hold exactly the backbone's conv MACs (counted independently by `ssn info`'s hooks)."""
    config = get_preset("mvtec").model
    shapes = cpu_probe.backbone_gemms(Backbone(config.backbone), config.image_size, batch=2)
    macs = sum(count * m * k * n for (m, k, n), count in shapes.items())
    backbone = next(r for r in model_stats(config) if r.name == "backbone")
    assert macs == 2 * backbone.macs and abs(backbone.macs / 1e9 - 12.00) < 0.01  # README: 12.00 GMAC at 256x256
    assert ((2 * 128 * 128, 3 * 7 * 7, 64), 1) in shapes.items()  # conv1: 2 images x 128x128 outputs, 7x7x3 taps


def test_bf16_label_flips_are_counted():
    truth = {"score": torch.tensor([0.2, 0.49, 0.51, 0.9]), "map": torch.full((4, 1, 2, 2), 0.3)}
    got = {"score": torch.tensor([0.2, 0.51, 0.51, 0.9]), "map": truth["map"].clone()}
    got["map"][1, 0, 0, 0] = 0.31  # crosses the pixel threshold 0.305
    row = bf16_labels.compare(truth, got, Thresholds(image=0.5, pixel=0.305))
    assert row["labels_flipped"] == 1 and row["pixels_flipped"] == 1
    assert row["score"] == pytest.approx(0.02) and row["score_rel"] == pytest.approx(0.02 / 0.9)
    assert row["map"] == pytest.approx(0.01) and (row["images"], row["pixels"]) == (4, 16)
    assert "labels_flipped" not in bf16_labels.compare(truth, got, Thresholds())
