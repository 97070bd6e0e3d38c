"""KolektorSDD2 with the authors' mixed-supervision split files (SegDecNet / SuperSimpleNet JIMS).

Every image `<id>.png` has a ground truth `<id>_GT.png`; an all-zero GT means a good image. The split file
`split_weakly_<N>.pyb` (N = 0, 16, 53, 126, 246 segmented positives) holds `(train, test)`, lists of
`(image_name, is_segmented)`: it says which training positives keep their masks. N246 means all of them and N0
none, so those two need no file; the other ratios do. Test images always keep their masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import ModelConfig
from training.data.base import DatasetError
from training.data.base import DefectDataset
from training.data.base import Record
from training.data.base import image_size
from training.data.base import layout_error
from training.data.base import read_mask
from training.data.base import require_dir
from training.data.pickles import load_split_pickle
from training.data.pickles import sample_pairs

NUM_SEGMENTED = (0, 16, 53, 126, 246)
TREE = """\
ROOT/                                  (KolektorSDD2/)
├── train/<id>.png, train/<id>_GT.png  e.g. 10000.png + 10000_GT.png (all-zero GT = good image)
├── test/<id>.png, test/<id>_GT.png
└── split_weakly_<N>.pyb               optional: the authors' split, N segmented positives (0, 16, 53, 126, 246);
                                       needed for N = 16, 53, 126"""


def read_entries(root: Path, split: str, num_segmented: int, split_file: Path | None) -> list[tuple[str, bool]]:
    """[(image id, mask used)] of `split` from the split file, or from the folder for N0 / N246."""
    path = Path(split_file) if split_file is not None else root / f"split_weakly_{num_segmented}.pyb"
    if path.is_file():
        content = load_split_pickle(path)
        if not (isinstance(content, (list, tuple)) and len(content) == 2):
            raise DatasetError(f"split file {str(path)!r}: expected (train, test) lists")
        pairs = sample_pairs(content[0] if split == "train" else content[1], path)
        return [(str(name), segmented or split == "test") for name, segmented in pairs]
    if split_file is not None:
        raise DatasetError(f"split file {str(path)!r} does not exist")
    if num_segmented not in (0, 246):
        raise layout_error(f"N={num_segmented} needs the authors' split file, not found", path, TREE)
    folder = root / split
    names = sorted(p.stem for p in folder.glob("*.png") if not p.stem.endswith("_GT"))
    return [(name, num_segmented == 246 or split == "test") for name in names]


def build(
    root: Path,
    split: str,
    config: ModelConfig,
    category: str | None = None,
    num_segmented: int = 246,
    split_file: str | Path | None = None,
    **common,
) -> DefectDataset:
    if category not in (None, "ksdd2"):
        raise DatasetError(f"KSDD2 has no categories (got category={category!r})")
    if split not in ("train", "test"):
        raise DatasetError(f"KSDD2 has train and test splits only, not {split!r}; use validation_split")
    if num_segmented not in NUM_SEGMENTED:
        raise DatasetError(f"num_segmented={num_segmented!r} must be one of {NUM_SEGMENTED}")
    require_dir(root, "KSDD2 root folder", TREE)
    folder = require_dir(root / split, f"{split} folder", TREE)
    entries = read_entries(root, split, num_segmented, split_file)
    if not entries:
        raise layout_error(f"no images in the {split} folder", folder, TREE)
    records = []
    for name, segmented in entries:
        image, gt = folder / f"{name}.png", folder / f"{name}_GT.png"
        if not image.is_file():
            raise layout_error(f"image {name}.png (listed in the split) not found", image, TREE)
        if not gt.is_file():
            raise layout_error(f"ground truth {name}_GT.png not found for {str(image)!r}", gt, TREE)
        defect = bool(np.any(read_mask(gt, image, image_size(image))))
        records.append(Record(image, int(defect), gt if defect and segmented else None))
    hint = f"as {folder}/<id>_GT.png, used when the split file marks the image as segmented"
    return DefectDataset(records, config, split, source="ksdd2", mask_hint=hint, **common)
