"""bench/serve.py runs end to end on CPU: a real server, both modes, table and JSON (timings never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_bench_table_and_json(tmp_path):
    """Both runtimes (PyTorch, onnxruntime) in one run, each in-process and served."""
    out_json = tmp_path / "serve.json"
    cmd = [sys.executable, str(ROOT / "bench" / "serve.py"), "--concurrency", "1", "3", "--max-batch", "2"]
    cmd += ["--seconds", "0.5", "--threads", "1", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for word in ("in-process", "served", "frames/s", "p95_ms", "p99_ms", "x in-process", "best served"):
        assert word in out.stdout
    assert "best served frames/s, onnxruntime / torch:" in out.stdout
    data = json.loads(out_json.read_text())
    rows = {(r["runtime"], r["mode"], r["concurrency"]): r for r in data["results"]}
    runtimes = ("torch", "onnxruntime")
    assert set(rows) == {(t, m, c) for t in runtimes for m in ("in-process", "served") for c in (1, 3)}
    for runtime in runtimes:
        assert rows[(runtime, "in-process", 3)]["batch"] == 2  # capped at --max-batch
        assert 1 <= rows[(runtime, "served", 3)]["server_batch"] <= 2
    assert all(r["frames"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows.values())
