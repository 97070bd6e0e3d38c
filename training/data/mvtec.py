"""MVTec AD (the published layout; the same reader serves VisA's anomalib split and the synthetic dataset)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import ModelConfig
from training.data.base import DatasetError
from training.data.base import DefectDataset
from training.data.base import Record
from training.data.base import layout_error
from training.data.base import list_images
from training.data.base import require_category
from training.data.base import require_dir
from training.data.base import require_images

TREE = """\
ROOT/                                  (e.g. mvtec_anomaly_detection/)
└── <category>/                        bottle, cable, capsule, carpet, grid, hazelnut, leather, metal_nut, pill,
    │                                  screw, tile, toothbrush, transistor, wood, zipper
    ├── train/good/*.png               defect-free training images
    ├── test/good/*.png
    ├── test/<defect>/*.png            e.g. test/broken_large/000.png
    └── ground_truth/<defect>/<stem>_mask.png   e.g. ground_truth/broken_large/000_mask.png (0 good, 255 defect)"""


def mvtec_mask_stems(stem: str) -> list[str]:
    return [f"{stem}_mask"]


def scan_mvtec_like(
    category_root: Path,
    split: str,
    tree: str,
    mask_stems: Callable[[str], list[str]],
    layout: str,
    train_defects: bool = False,
) -> list[Record]:
    """Records of `split` in an MVTec-style category: <split>/good, <split>/<defect>, ground_truth/<defect>.
    The train split is good images only, unless `train_defects` (the synthetic layout) also reads train/<defect>."""
    if split not in ("train", "test"):
        raise DatasetError(
            f"the {layout} layout has train and test splits only, not {split!r}; take a validation set from the "
            "test split with training.data.base.validation_split"
        )
    split_dir = require_dir(category_root / split, f"{split} folder", tree)
    if split == "train":
        good = require_images(split_dir / "good", "training folder of good images", tree)
        defects = _defect_records(category_root, split_dir, tree, mask_stems, split) if train_defects else []
        return [Record(p, 0) for p in good] + defects
    records = [Record(p, 0) for p in list_images(split_dir / "good")] if (split_dir / "good").is_dir() else []
    records += _defect_records(category_root, split_dir, tree, mask_stems, split)
    if not records:
        raise layout_error("the test folder holds no images", split_dir, tree)
    return records


def _defect_records(
    category_root: Path, split_dir: Path, tree: str, mask_stems: Callable[[str], list[str]], split: str
) -> list[Record]:
    """Every image of <split>/<defect>/ (any folder but good) with its mask from ground_truth/<defect>/."""
    records = []
    for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and d.name != "good"):
        mask_dir = category_root / "ground_truth" / defect_dir.name
        masks = {p.stem: p for p in list_images(mask_dir)} if mask_dir.is_dir() else {}
        for image in list_images(defect_dir):
            candidates = mask_stems(image.stem)
            mask = next((masks[s] for s in candidates if s in masks), None)
            if mask is None:
                raise layout_error(
                    f"defective {split} image {str(image)!r} has no mask (looked for {candidates[0]}.png)",
                    mask_dir,
                    tree,
                )
            records.append(Record(image, 1, mask))
    return records


def build(root: Path, split: str, config: ModelConfig, category: str | None = None, **common) -> DefectDataset:
    require_dir(root, "MVTec AD root folder", TREE)
    category_root = require_category(root, category, "train/good", TREE)
    records = scan_mvtec_like(category_root, split, TREE, mvtec_mask_stems, "MVTec AD")
    hint = f"in {category_root / 'ground_truth'}/<defect>/<stem>_mask.png"
    return DefectDataset(records, config, split, source=f"mvtec/{category}", mask_hint=hint, **common)
