"""SensumSODF (capsule, softgel), 3-fold cross-validation with the authors' split pickles.

`sensum_splits/<category>/<fold>/<split>/neg.pckl` lists the good images and `pos.pckl` (test) or
`pos_<R>.pckl` (train, R = 100 * ratio of segmented positives: 0, 10, ..., 100) the defective ones, each as
`(sample_id, is_segmented)`; ids are zero-padded to three digits in the file names. Good images and test
positives always count as segmented. The split files come from the authors (README "Datasets").
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig
from training.data.base import DatasetError
from training.data.base import DefectDataset
from training.data.base import Record
from training.data.base import layout_error
from training.data.base import require_dir
from training.data.pickles import load_split_pickle
from training.data.pickles import sample_pairs

CATEGORIES = ("capsule", "softgel")
FOLDS = (0, 1, 2)
TREE = """\
ROOT/                                  (SensumSODF/)
├── <category>/                        capsule, softgel
│   ├── negative/data/<id>.png         good images, ids zero-padded to 3 digits (000.png)
│   ├── positive/data/<id>.png         defective images
│   └── positive/annotation/<id>.png   their masks (0 good, 255 defect)
└── sensum_splits/<category>/<fold>/   fold 0, 1, 2 (the authors' 3-fold CV split files)
    ├── train/neg.pckl, train/pos_<R>.pckl   R = 100 * ratio of segmented positives (pos_100.pckl = all)
    └── test/neg.pckl, test/pos.pckl"""


def read_split(root: Path, category: str, fold: int, split: str, ratio: float) -> tuple[list, list]:
    folder = root / "sensum_splits" / category / str(fold) / split
    require_dir(folder, "split folder", TREE)
    pos_name = "pos.pckl" if split == "test" else f"pos_{round(ratio * 100)}.pckl"
    lists = []
    for name in ("neg.pckl", pos_name):
        path = folder / name
        if not path.is_file():
            raise layout_error(f"split file {name} not found", path, TREE)
        lists.append(sample_pairs(load_split_pickle(path), path))
    return lists[0], lists[1]


def build(
    root: Path,
    split: str,
    config: ModelConfig,
    category: str | None = None,
    fold: int = 0,
    ratio: float = 1.0,
    **common,
) -> DefectDataset:
    require_dir(root, "SensumSODF root folder", TREE)
    if category not in CATEGORIES:
        found = [c for c in CATEGORIES if (root / c).is_dir()]
        raise layout_error(
            f"category {category!r} is not a SensumSODF category ({', '.join(CATEGORIES)}); found: "
            f"{', '.join(found) or 'none'}; in",
            root,
            TREE,
        )
    if split not in ("train", "test"):
        raise DatasetError(f"SensumSODF has train and test splits only, not {split!r}; use validation_split")
    if fold not in FOLDS:
        raise DatasetError(f"fold={fold!r} must be one of {FOLDS}")
    if not 0 <= ratio <= 1:
        raise DatasetError(f"ratio={ratio!r} (segmented positives) must be in [0, 1]")
    cat = root / category
    neg, pos = read_split(root, category, fold, split, ratio)
    records = []
    for sample, _ in neg:
        records.append(Record(_existing(cat / "negative" / "data" / _file_name(sample)), 0))
    for sample, segmented in pos:
        image = _existing(cat / "positive" / "data" / _file_name(sample))
        used = segmented or split == "test"
        mask = _existing(cat / "positive" / "annotation" / _file_name(sample)) if used else None
        records.append(Record(image, 1, mask))
    hint = f"in {cat / 'positive' / 'annotation'}/<id>.png, used when the split file marks the image as segmented"
    return DefectDataset(records, config, split, source=f"sensum/{category}/fold{fold}", mask_hint=hint, **common)


def _file_name(sample) -> str:
    """Split id -> file name: integers zero-padded to 3 digits, as the authors' f"{sample_id:03}.png"."""
    text = str(sample)
    return f"{int(text):03}.png" if text.isdigit() else f"{text}.png"


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise layout_error("file listed in the split not found", path, TREE)
    return path
