"""kernels/aot.py: every kernel compiles for real, ahead of time, for GPUs that are not here: sm_90 (H100/H200) and
sm_80 (A100), at every autotune config and dtype, without register spills; bench/README.md shows this table.

The interpreter accepts programs the compiler rejects, so this is the CPU-side proof that the kernels build. It
runs in a subprocess without TRITON_INTERPRET (the kernels must be defined as compiled kernels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kernels import aot

ROOT = Path(__file__).resolve().parents[1]


def test_every_kernel_compiles_for_hopper_and_ampere_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "kernels.aot", "--markdown", "--json", str(tmp_path / "aot.json")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = json.loads((tmp_path / "aot.json").read_text())
    jobs = aot.jobs()
    assert len(rows) == len(jobs) and len(jobs) >= 3 * 2 * 7  # kernels x archs x (3 + 3 + 1 configs over dtypes)
    assert {(r["kernel"], r["arch"], r["dtype"]) for r in rows} == {
        (k, f"sm_{a}", d) for k in ("seg_head", "cls_head", "anomaly_map") for a in (90, 80) for d in aot.DTYPES
    }
    for r in rows:
        assert r["registers"] > 0 and r["cubin_bytes"] > 0 and r["spill_stores"] == r["spill_loads"] == 0, r
        assert r["arch"] == "sm_80" or r["blocks_per_sm"] >= 1, r
    readme = (ROOT / "bench" / "README.md").read_text()
    missing = [line for line in out.stdout.splitlines() if line.startswith("| ") and line not in readme]
    assert not missing, (
        "bench/README.md's compile table is out of date (python -m kernels.aot --markdown):\n" + "\n".join(missing)
    )


def test_occupancy_arithmetic():
    """H200 (sm_90): 64K registers, 228 KiB shared memory, 64 warps, 32 blocks per SM; registers per warp in
    units of 256."""
    assert aot.occupancy(96, 20480, 4) == {"blocks_per_sm": 5, "occupancy": 20 / 64}  # 96 regs: 3072/warp
    assert aot.occupancy(255, 0, 8)["blocks_per_sm"] == 1  # 256 x 32 x 8 = 64K registers
    assert aot.occupancy(32, 120 * 1024, 4)["blocks_per_sm"] == 1  # shared memory bound
    assert aot.occupancy(16, 0, 1)["blocks_per_sm"] == 32  # block-count bound
