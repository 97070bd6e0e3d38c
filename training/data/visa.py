"""VisA in anomalib's 1-class split (`visa_pytorch/`), as the authors use it (`datamodules/setup/prepare_visa.py`).

The raw download (`<category>/Data/Images/...`, `split_csv/1cls.csv`) must first be split by anomalib's prepare
step, which copies images into `visa_pytorch/<category>/{train,test}/{good,bad}` and writes binarized masks to
`ground_truth/bad/<stem>.png` (README "Datasets").
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig
from training.data.base import DefectDataset
from training.data.base import layout_error
from training.data.base import require_category
from training.data.base import require_dir
from training.data.mvtec import scan_mvtec_like

TREE = """\
ROOT/                                  the VisA folder (or its visa_pytorch/ directly)
└── visa_pytorch/                      written by anomalib's prepare step (1-class split)
    └── <category>/                    candle, capsules, cashew, chewinggum, fryum, macaroni1, macaroni2,
        │                              pcb1, pcb2, pcb3, pcb4, pipe_fryum
        ├── train/good/*.JPG
        ├── test/good/*.JPG
        ├── test/bad/*.JPG
        └── ground_truth/bad/<stem>.png   (0 good, 255 defect)
make it with: python -c "from anomalib.data import Visa; Visa(root='ROOT', category='candle').prepare_data()\""""


def visa_mask_stems(stem: str) -> list[str]:
    return [stem]


def split_root(root: Path) -> Path:
    """ROOT/visa_pytorch, or ROOT itself when it already is the split folder."""
    require_dir(root, "VisA root folder", TREE)
    if (root / "visa_pytorch").is_dir():
        return root / "visa_pytorch"
    if (root / "split_csv").is_dir() or any((p / "Data" / "Images").is_dir() for p in root.iterdir() if p.is_dir()):
        raise layout_error("this is the raw VisA download, not yet split (no visa_pytorch/ in it)", root, TREE)
    return root


def build(root: Path, split: str, config: ModelConfig, category: str | None = None, **common) -> DefectDataset:
    base = split_root(root)
    category_root = require_category(base, category, "train/good", TREE)
    records = scan_mvtec_like(category_root, split, TREE, visa_mask_stems, "VisA")
    hint = f"in {category_root / 'ground_truth'}/bad/<stem>.png"
    return DefectDataset(records, config, split, source=f"visa/{category}", mask_hint=hint, **common)
