"""bench/throughput.py prints its table on CPU and writes JSON (timings are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import backbone_cpu

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_table_and_json(tmp_path):
    out_json = tmp_path / "tp.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "throughput.py"),
        "--batch",
        "1",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--json",
        str(out_json),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for word in ("provider", "median_ms", "p99_ms", "img/s", "x vs reference", "fast-cpu", "folded", "feat+heads"):
        assert word in out.stdout
    assert "GPU figures need --device cuda" in out.stdout
    assert "max |reference - fast-cpu - folded|" in out.stdout
    data = json.loads(out_json.read_text())
    assert data["preset"] == "tiny" and data["env"]["device"] == "cpu"
    probe = {(r["batch"], r["stage"]) for r in data["results"] if r["provider"] == "gemm-probe"}  # stage = its dtype
    assert {(1, "fp32"), (2, "fp32")} <= probe and {s for _, s in probe} <= {"fp32", "bf16"}
    assert data["limits"]["macs"]  # GMAC/s per provider need the MACs per image
    timed = [r for r in data["results"] if r["stage"] != "max_diff" and r["provider"] != "gemm-probe"]
    keys = {(r["provider"], r["batch"], r["stage"]) for r in timed}
    common = ("backbone", "feat+heads", "seg+score", "postprocess", "e2e")
    stages = {"reference": ("feature", "heads"), "fast-cpu": ("feature", "heads"), "folded": ("seg", "cls")}
    assert keys == {(p, b, s) for p, own in stages.items() for b in (1, 2) for s in (*common, *own)}
    assert all(r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] for r in timed)
    diffs = [r for r in data["results"] if r["stage"] == "max_diff"]
    assert len(diffs) == 2 and max(r["abs"] for r in diffs) <= 1e-5 and max(r["rel"] for r in diffs) <= 1e-5


def test_backbone_cpu_variants_table(tmp_path, capsys):
    out_json = tmp_path / "bb.json"
    args = ["--batch", "1", "--repeats", "1", "--warmup", "0", "--variants", "eager", "channels_last"]
    assert backbone_cpu.main([*args, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "x vs eager" in printed and "channels_last" in printed
    rows = json.loads(out_json.read_text())["results"]
    assert [r["variant"] for r in rows] == ["eager", "channels_last"]
    assert rows[0]["max_rel_diff"] == 0 and rows[1]["max_rel_diff"] <= 1e-5  # same outputs, other layout


def test_throughput_rejects_bad_batch(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--batch", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "--batch values must be >= 1" in out.stderr


def test_throughput_accepts_every_documented_provider(tmp_path):
    """Every provider README names parses (the served `triton-grpc` included); the run then stops at the bad batch."""
    providers = ["reference", "fast-cpu", "folded", "triton", "torch-compile", "onnxruntime", "anomalib", "triton-grpc"]
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--providers", *providers, "--batch", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "invalid choice" not in out.stderr and "--batch values must be >= 1" in out.stderr, out.stderr


def test_train_bench_compares_precisions_in_one_run(tmp_path):
    out_json = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "bench" / "train.py"), "--presets", "tiny", "--warmup", "0", "--repeats", "1"]
    out = subprocess.run(cmd + ["--json", str(out_json)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out_json.read_text())
    stages = {(r["precision"], r["stage"]) for r in data["results"]}
    assert {("fp32", "step uncached"), ("fp32", "fwd+bwd")} <= stages
    if "bf16" in data["precisions"]:  # the CPU has native bf16
        assert ("bf16", "fwd+bwd") in stages and "tiny: bf16 fwd+bwd is" in out.stdout
    else:
        assert "bf16 skipped: this CPU has no native bf16" in out.stdout
