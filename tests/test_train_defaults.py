"""Training on a user's own line without surprises: the regime follows the training split, a random backbone in
the unsupervised regime is warned about, a model that ranks defects below good images is reported loudly, and
`--fail-below` makes `ssn train` / `ssn eval` exit non-zero."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datafakes import folder
from datafakes import mvtec

from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint import read_metadata
from pipeline.checkpoint import save_checkpoint
from pipeline.cli import main
from training.evaluate import EXIT_BELOW
from training.regimes import regime_for_split
from training.report import EvalPredictions
from training.report import write_report

SMALL = ["--preset", "tiny", "--set", "image_size=[32,48]", "--backbone-weights", "random", "--quiet"]
RANDOM_WARNING = "unsupervised training on a RANDOM backbone"


@pytest.mark.parametrize(
    "counts,regime",
    [((5, 0, 0), "unsupervised"), ((5, 3, 3), "supervised"), ((5, 3, 1), "mixed"), ((5, 3, 0), "weak")],
)
def test_regime_for_split(counts, regime):
    assert regime_for_split(*counts)[0] == regime


@pytest.mark.parametrize(
    "defects,masks,regime,stop_grad",
    [(0, 0, "unsupervised", True), (2, 2, "supervised", False), (2, 1, "mixed", False), (2, 0, "weak", False)],
)
def test_regime_follows_the_training_split(tmp_path, capsys, defects, masks, regime, stop_grad):
    """No --supervision: the split's content picks the regime, printed before training with how to change it."""
    root = folder(tmp_path / "data", good=4, defects=defects, masks=masks)
    out = tmp_path / "ck.safetensors"
    args = ["train", *SMALL, "--dataset", "folder", "--data", str(root), "--epochs", "1", "--no-eval"]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    chosen = next(i for i, line in enumerate(lines) if line.startswith("supervision:"))
    started = next(i for i, line in enumerate(lines) if line.startswith("training tiny"))
    assert chosen < started and f"supervision: {regime}, from the training split" in lines[chosen]
    assert "to change it: --supervision" in lines[chosen] and f"({regime}," in lines[started]
    assert json.loads(read_metadata(out)["config"])["stop_grad"] is stop_grad  # the regime's setting was applied
    assert (RANDOM_WARNING in captured.err) is (regime == "unsupervised")  # random backbone + unsupervised only


def test_tiny_on_an_mvtec_tree_trains_unsupervised_with_a_warning(tmp_path, capsys):
    """The issue's case: `--preset tiny --dataset mvtec` stopped with 'supervised training needs defective images'."""
    mvtec(tmp_path / "mv", good=3)
    args = ["train", *SMALL, "--dataset", "mvtec", "--data", str(tmp_path / "mv"), "--category", "bottle"]
    assert main([*args, "--epochs", "1", "--no-eval", "--out", str(tmp_path / "ck.safetensors")]) == 0
    captured = capsys.readouterr()
    assert "supervision: unsupervised, from the training split (3 good, 0 defective" in captured.out
    assert RANDOM_WARNING in captured.err and "README" in captured.err
    assert captured.err.index(RANDOM_WARNING) >= 0 and "training tiny (unsupervised" in captured.out


def test_an_explicit_regime_is_kept(tmp_path, capsys):
    root = folder(tmp_path / "data", good=4, defects=2, masks=2)
    args = ["train", *SMALL, "--dataset", "folder", "--data", str(root), "--supervision", "weak", "--epochs", "1"]
    assert main([*args, "--no-eval", "--out", str(tmp_path / "ck.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "supervision: weak (--supervision)" in out and "0 with masks used" in out


def _inverted_predictions(n: int = 8, size: int = 16) -> EvalPredictions:
    """Defective images and defect pixels scored below the good ones."""
    masks = np.zeros((n, size, size), bool)
    masks[: n // 2, 4:10, 4:10] = True
    labels = masks.reshape(n, -1).any(axis=1)
    maps = np.where(masks, 0.1, 0.9).astype(np.float32)
    scores = np.where(labels, 0.2, 0.8).astype(np.float32)
    images = np.zeros((n, size, size, 3), np.uint8)
    return EvalPredictions(scores, labels, maps, masks, [f"x/{i}.png" for i in range(n)], images=images)


def test_report_leads_with_the_inverted_ranking_warning(tmp_path):
    result = write_report(_inverted_predictions(), tmp_path, dataset="folder")
    assert [w.split(":")[0] for w in result["warnings"][:2]] == ["I-AUROC 0.0 % < 50 %", "P-AUROC 0.0 % < 50 %"]
    assert "What to try" in result["warnings"][-1]
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[0].startswith("# Evaluation") and lines[2].startswith("> **WARNING: I-AUROC 0.0 % < 50 %")
    good = _inverted_predictions()
    good.scores, good.maps = 1 - good.scores, 1 - good.maps
    assert write_report(good, tmp_path / "good", dataset="folder")["warnings"] == []
    assert "WARNING" not in (tmp_path / "good" / "report.md").read_text()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained (supervised, 1 epoch) on a folder line with a labelled test split."""
    tmp = tmp_path_factory.mktemp("line")
    root = folder(tmp / "data", good=4, defects=2, masks=2)
    folder(root, good=4, defects=4, masks=4, split="test")
    out = tmp / "ck.safetensors"
    assert main(["train", *SMALL, "--dataset", "folder", "--data", str(root), "--epochs", "1", "--out", str(out)]) == 0
    return root, out


def _eval(root, checkpoint, *extra) -> list[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--dataset", "folder", "--data", str(root), *extra]


def test_fail_below_sets_the_exit_status_of_eval(trained, tmp_path, capsys):
    root, ck = trained
    assert main(_eval(root, ck, "--json", "--out", str(tmp_path / "r0"))) == 0
    value = json.loads(capsys.readouterr().out)["metrics"]["P-AUROC"]
    assert 0 < value < 0.995  # room for the +0.5 point gate below
    assert main(_eval(root, ck, "--fail-below", f"P-AUROC={value}", "--out", str(tmp_path / "r1"))) == 0
    assert "passed --fail-below: P-AUROC >=" in capsys.readouterr().out
    above = f"P-AUROC={100 * value + 0.5:.2f}%"
    assert main(_eval(root, ck, "--fail-below", "I-AUROC=0", "--fail-below", above, "--out", str(tmp_path / "r2"))) == 3
    err = capsys.readouterr().err
    assert "FAILED --fail-below: P-AUROC" in err and "I-AUROC" not in err.split("FAILED")[1]


def test_a_metric_that_cannot_be_computed_fails_the_gate(trained, tmp_path, capsys):
    root, ck = trained
    good_only = folder(tmp_path / "good_only", good=3, defects=0, masks=0, split="test")
    folder(good_only, good=2, defects=0, masks=0)
    assert main(_eval(good_only, ck, "--fail-below", "I-AUROC=0.5", "--out", str(tmp_path / "r"))) == EXIT_BELOW
    assert "I-AUROC could not be computed" in capsys.readouterr().err


def test_eval_warns_loudly_when_defects_rank_below_good_images(trained, tmp_path, capsys):
    """The trained model, and the same model with its score logit negated (I-AUROC -> 1 - I-AUROC): the one
    below 0.5 is reported in the terminal and at the top of report.md; the other is not. Evaluated on 3 good and
    3 defective images: 9 pairs, so neither I-AUROC can be exactly 0.5 (the fakes' defects are random images, and
    on 4 x 4 a trained model can rank 8 of 16 pairs right by chance)."""
    trained_root, ck = trained
    root = tmp_path / "odd"
    shutil.copytree(trained_root, root)
    for extra in ("test/good/g3.png", "test/defect/d3.jpg", "test/masks/d3_mask.png"):
        (root / extra).unlink()
    model, metadata = load_checkpoint(ck)
    model.cls_head.fc.weight.data.neg_()
    model.cls_head.fc.bias.data.neg_()
    flipped = tmp_path / "flipped.safetensors"
    save_checkpoint(model, flipped, metadata["backbone_weights"], thresholds=json.loads(metadata["thresholds"]))
    results = {}
    for name, checkpoint in (("trained", ck), ("flipped", flipped)):
        assert main(_eval(root, checkpoint, "--out", str(tmp_path / name))) == 0
        captured = capsys.readouterr()
        report = json.loads((tmp_path / name / "metrics.json").read_text())
        results[name] = (report["metrics"]["I-AUROC"], captured.err, (tmp_path / name / "report.md").read_text())
    assert results["trained"][0] == pytest.approx(1 - results["flipped"][0], abs=1e-6)
    low, high = sorted(results.values())
    assert low[0] < 0.5 < high[0]
    assert "WARNING: I-AUROC" in low[1] and "ranks defective images below good images" in low[1]
    assert low[2].splitlines()[2].startswith("> **WARNING: I-AUROC")
    assert "WARNING: I-AUROC" not in high[1] and "WARNING: I-AUROC" not in high[2]


def test_fail_below_sets_the_exit_status_of_train(trained, tmp_path, capsys):
    root, _ = trained
    base = ["train", *SMALL, "--dataset", "folder", "--data", str(root), "--epochs", "1"]
    out = tmp_path / "ck.safetensors"
    assert main([*base, "--fail-below", "P-AUROC=100%", "--out", str(out)]) == EXIT_BELOW
    captured = capsys.readouterr()
    assert "FAILED --fail-below: P-AUROC" in captured.err and "do not deploy it" in captured.out
    assert out.is_file()  # written for inspection, the exit status says not to ship it
    assert main([*base, "--fail-below", "P-AUROC=0", "--out", str(tmp_path / "ok.safetensors")]) == 0


def test_fail_below_is_checked_before_training(tmp_path, capsys):
    root = folder(tmp_path / "data", good=2, defects=0, masks=0)
    base = ["train", *SMALL, "--dataset", "folder", "--data", str(root), "--out", str(tmp_path / "ck.safetensors")]
    assert main([*base, "--fail-below", "AUPRO=0.8", "--no-eval"]) == 2
    assert "--fail-below needs the evaluation" in capsys.readouterr().err
    for bad, says in (("AUPR0=0.8", "METRIC one of I-AUROC"), ("AUPRO=85", "fraction in [0, 1]")):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--fail-below", bad])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "ck.safetensors").exists()
