"""The embedded default end to end, as a user runs it: ssn synth -> ssn train (tiny preset, synthetic data, CPU)
-> ssn eval -> ssn infer prints a label per image. Gate: I-AUROC >= 0.90 and AUPRO >= 0.85 on the 64-image test
split (32 good, 32 defective), and a good and a defective image labelled correctly.

Measured on this split (bench/quality.py's metal seed 0; 2026-12-04, 320x320 with 40x40 feature windows, the conv1
chosen per line, the score started at exactly the map's max, bf16 training on an AVX512-BF16 CPU): I-AUROC 99.0,
AUPRO 98.0 (with the earlier score init 97.9 / 97.8; 256x256 read 99.1 / 97.7 there, and 96.3 / 95.4 on an AMX CPU
before the conv1 choice); the gate keeps a margin below them so that a different CPU's rounding (or fp32 where bf16
is not native) cannot fail it, and the issue's targets (I-AUROC >= 95, AUPRO >= 85 on every family) are reported by
bench/quality.py. The default 32-image split is small: a few faint spots and stains that score below the brightest
good image move its I-AUROC by several points (98.4 at 320x320; 91.8 at 256x256 before the conv1 choice).

The tiny preset trains supervised on the synthetic line's 32 labelled training defects (the test defects are other
draws); the backbone is random here (no download), and `--backbone-weights random` makes that explicit, so the test
runs the same way on a machine that has ImageNet weights cached (README "Training and evaluation")."""

from __future__ import annotations

import json
import subprocess

from checkout import run_ssn


def ssn(*args: str) -> subprocess.CompletedProcess:
    out = run_ssn(*args, timeout=900)
    assert out.returncode == 0, f"ssn {args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_synthetic_tiny_train_eval_infer(tmp_path):
    data, ck = tmp_path / "synth", tmp_path / "ck.safetensors"
    ssn("synth", "--out", str(data), "--categories", "metal", "--test", "64")
    trained = ssn(
        "train",
        "--preset",
        "tiny",
        "--synthetic",
        "--data",
        str(data),
        "--backbone-weights",
        "random",
        "--out",
        str(ck),
        "--quiet",
    )
    assert "trained in" in trained.stdout and "(supervised," in trained.stdout and ck.is_file()

    result = json.loads(ssn("eval", "--checkpoint", str(ck), "--synthetic", "--data", str(data), "--json").stdout)
    metrics = result["metrics"]
    print(trained.stdout[-1500:], json.dumps(metrics, indent=1))
    assert metrics["I-AUROC"] >= 0.90 and metrics["AUPRO"] >= 0.85, metrics
    assert set(result["thresholds"]) >= {"image", "pixel"}  # F1 thresholds stored by ssn train

    good, defect = data / "metal/test/good/000.png", data / "metal/test/crack/000.png"
    rows = json.loads(ssn("infer", "--checkpoint", str(ck), str(good), str(defect), "--json").stdout)
    assert [r["label"] for r in rows] == ["good", "defect"]
    printed = ssn("infer", "--checkpoint", str(ck), str(good)).stdout
    assert " good " in printed
