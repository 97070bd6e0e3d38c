"""bench/kernels.py and the `triton` provider of bench/throughput.py on a CPU-only host (timings are reported,
never asserted; the GPU runs are bench/device_check.sh's)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import kernels as kernels_bench
from bench import throughput


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-host behaviour")
def test_kernel_bench_needs_cuda_and_says_so(capsys):
    assert kernels_bench.main([]) == 0
    assert "needs a CUDA device" in capsys.readouterr().out


def test_roofline_model_prints_without_a_gpu(capsys):
    """The byte model the kernels were decided on (bench/README.md): the fused form moves far fewer bytes."""
    assert kernels_bench.main(["--roofline", "--batch", "64", "--sizes", "mvtec"]) == 0
    out = capsys.readouterr().out
    assert "bound ratio" in out and "cls_head" in out and "anomaly_map" in out
    for op in ("seg_head", "cls_head", "anomaly_map"):
        t = kernels_bench.traffic(op, "mvtec", 64)
        assert t["fused_bytes"] < t["eager_bytes"] / 4, op


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-host fallback")
def test_triton_provider_falls_back_to_folded_on_cpu(tmp_path, capsys):
    out_json = tmp_path / "tp.json"
    args = ["--batch", "1", "--warmup", "0", "--repeats", "1", "--providers", "folded", "triton"]
    with pytest.warns(UserWarning, match="GPU engine: CUDA is not available; falling back"):
        assert throughput.main([*args, "--json", str(out_json)]) == 0
    assert "max |folded - triton| over all outputs = 0.00e+00" in capsys.readouterr().out
    rows = json.loads(out_json.read_text())["results"]
    assert {r["stage"] for r in rows if r["provider"] == "triton"} >= {"backbone", "feat+heads", "e2e"}
