"""bench/quality.py's draws: the training seed reaches `ssn train`'s own parser; the summary names each line's worst
draw; a row's backbone source comes from the checkpoint. (The benchmark itself trains for minutes per line and is not
run here.)"""

from pathlib import Path

import pytest

from bench import quality
from pipeline.cli import build_parser


def parsed(draw: int | None):
    args = quality.train_args("stone", 1, 64, ["--epochs", "3"], Path("o.safetensors"), Path("r"), draw)
    return build_parser("train").parse_args(args)


def test_a_draw_is_the_training_seed_ssn_train_reads():
    assert parsed(7).seed == 7
    assert parsed(0).seed == 0
    default = parsed(None)
    assert default.seed is None  # the regime's own seed
    assert default.category == "stone" and default.epochs == 3
    assert "seed=1" in default.data_option  # the dataset seed stays a data option


def test_draw_names_round_trip():
    assert [quality.parse_draw(t) for t in ("default", "2")] == [None, 2]
    assert [quality.draw_name(d) for d in (None, 0)] == ["default", "0"]


def row(family: str, seed: int, draw, auroc: float, aupro: float) -> dict:
    met = auroc >= 0.95 and aupro >= 0.85
    return {"family": family, "split": "tune", "seed": seed, "draw": draw, "I-AUROC": auroc, "AUPRO": aupro,
            "P-AUROC": 0.97, "meets_targets": met}  # fmt: skip


def test_summary_gives_each_lines_worst_draw():
    rows = [
        row("stone", 1, None, 0.971, 0.953),
        row("stone", 1, 1, 0.961, 0.958),
        row("stone", 1, 2, 0.941, 0.956),
        row("metal", 0, None, 0.963, 0.954),  # one draw only: no line of its own
    ]
    lines = quality.summary(rows)
    assert lines[0].startswith("tune: 4 runs")
    assert lines[1:] == ["stone seed 1: worst of 3 draws I-AUROC 94.1  AUPRO 95.3; targets met on 2 of 3"]


def test_a_seed_given_twice_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        quality.main(["--families", "metal", "--draws", "1", "--", "--seed", "2"])
    assert exit_.value.code == 2
    assert "not both" in capsys.readouterr().err


def test_the_row_names_the_backbone_the_checkpoint_recorded(tmp_path):
    """What the probe chose is read back from the checkpoint `ssn train` wrote, not from the run's log."""
    import dataclasses

    from pipeline.checkpoint import save_checkpoint
    from pipeline.config import get_preset
    from training.model_init import build_model

    config = dataclasses.replace(get_preset("tiny").model, image_size=(64, 64))
    model, _ = build_model(config, "random", seed=3)
    recorded = "random(seed=3)+oriented-conv1(39)+colour(floor=0.1)+conv1-choice(drawn 97.9, oriented 98.7)"
    path = save_checkpoint(model, tmp_path / "line.safetensors", recorded)
    assert quality.backbone_source(path) == recorded
