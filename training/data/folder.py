"""A user's own folders: good images, optional defective images, optional masks (any image format)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig
from training.data.base import SPLITS
from training.data.base import DatasetError
from training.data.base import DefectDataset
from training.data.base import Record
from training.data.base import layout_error
from training.data.base import list_images
from training.data.base import require_dir
from training.data.base import require_images

TREE = """\
ROOT/
├── train/
│   ├── good/      defect-free images (required, at least one)
│   ├── defect/    optional: defective images (supervised, mixed or weakly supervised training)
│   └── masks/     optional: a mask per defective image, <stem>.png or <stem>_mask.png (0 good, non-zero defect);
│                  a defective image without a mask trains the classification head only
├── val/           optional, same sub-folders (thresholds are chosen here; without it: validation_split)
└── test/          optional, same sub-folders
(MVTec-style trees can also be read with the name "mvtec")"""


def splits(root: Path) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if (root / s).is_dir())


def build(root: Path, split: str, config: ModelConfig, category: str | None = None, **common) -> DefectDataset:
    if category is not None:
        raise DatasetError(f"the folder layout has no categories (got category={category!r}); point ROOT at it")
    require_dir(root, "dataset root folder", TREE)
    split_dir = require_dir(root / split, f"{split} folder", TREE)
    good_dir, defect_dir, mask_dir = split_dir / "good", split_dir / "defect", split_dir / "masks"
    if split == "train":
        good = require_images(good_dir, "training folder of good images", TREE)
    else:
        good = list_images(good_dir) if good_dir.is_dir() else []
    records = [Record(p, 0) for p in good]
    masks = {p.stem: p for p in list_images(mask_dir)} if mask_dir.is_dir() else {}
    defects = list_images(defect_dir) if defect_dir.is_dir() else []
    for image in defects:
        mask = masks.get(image.stem, masks.get(f"{image.stem}_mask"))
        records.append(Record(image, 1, mask))
    if not records:
        raise layout_error(f"the {split} folder holds no images in good/ or defect/", split_dir, TREE)
    unmatched = sorted(set(masks) - {p.stem for p in defects} - {f"{p.stem}_mask" for p in defects})
    if unmatched:
        names = ", ".join(repr(masks[s].name) for s in unmatched[:5])
        raise layout_error(f"mask(s) {names} match no image in {defect_dir}", mask_dir, TREE)
    hint = f"in {mask_dir}/<stem>.png or <stem>_mask.png"
    return DefectDataset(records, config, split, source=f"folder:{root.name}", mask_hint=hint, **common)
