"""The dataset contract, image/mask reading and the one factory for every layout (spec §2.4, §2.5).

A sample is a dict (BRIEF contract):
    image        float32 [3, H, W], normalized exactly as `pipeline.images.to_model_input`
    mask         float32 [1, H, W] in {0, 1}; zeros for good images and for positives whose mask is not used
    label        float32 scalar, 0 good, 1 defect
    is_segmented bool scalar tensor: True for good images and for positives whose mask is used
    loss_mask    float32 [1, H, W] distance-transform weights (all ones when unused)
    path         str, the image file
    index        int, the position in this dataset (stable: records are sorted at construction)
Images resize bilinearly (8-bit rounded, as the official cv2 path); masks and loss masks resize nearest (cv2
INTER_NEAREST = torch "nearest"). Dilation and distance weights apply to the training split only.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL import UnidentifiedImageError

from pipeline.config import ModelConfig
from pipeline.images import read_rgb
from pipeline.images import to_model_input
from training.data.labels import apply_flip
from training.data.labels import dilate_mask
from training.data.labels import distance_weights

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
# name -> module in training/data defining build(root, split, config, category=None, **options)
DATASETS = {
    "mvtec": "mvtec",
    "visa": "visa",
    "ksdd2": "ksdd2",
    "sensum": "sensum",
    "folder": "folder",
    "synthetic": "synthetic",
}
COMMON_OPTIONS = ("dilate", "dt", "good_only", "requires_masks", "check_files")


class DatasetError(ValueError):
    """A dataset that cannot be read as its layout says; the message names the path."""


def layout_error(problem: str, path: str | Path, tree: str) -> DatasetError:
    return DatasetError(f"{problem}: {str(path)!r}\nexpected layout:\n{tree.rstrip()}")


def require_dir(path: Path, what: str, tree: str) -> Path:
    if not path.is_dir():
        problem = f"{what} is a file, not a folder" if path.exists() else f"{what} not found"
        raise layout_error(problem, path, tree)
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def require_images(folder: Path, what: str, tree: str) -> list[Path]:
    images = list_images(require_dir(folder, what, tree))
    if not images:
        raise layout_error(f"{what} holds no images ({', '.join(IMAGE_SUFFIXES)})", folder, tree)
    return images


def list_categories(root: Path, marker: str) -> list[str]:
    """Sub-folders of `root` that contain `marker` (e.g. 'train/good')."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / marker).is_dir())


def require_category(root: Path, category: str | None, marker: str, tree: str) -> Path:
    found = list_categories(root, marker)
    if category is None or not (root / category / marker).is_dir():
        problem = "no category given" if category is None else f"category {category!r} not found"
        listing = ", ".join(found) if found else f"none (no sub-folder with {marker}/)"
        raise layout_error(f"{problem}; categories found: {listing}; in", root, tree)
    return root / category


@dataclass(frozen=True)
class Record:
    image: Path
    label: int  # 0 good, 1 defect
    mask: Path | None = None  # None: a good image, or a defect whose mask is absent or not used

    @property
    def is_segmented(self) -> bool:
        return self.label == 0 or self.mask is not None


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError as err:
        raise DatasetError(f"{what} {str(path)!r} does not exist") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{what} {str(path)!r} is not a readable image: {err}") from err


def read_mask(path: Path, image_path: Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Mask file -> uint8 [H, W] in {0, 1} (any non-zero pixel is a defect, as cv2 connected components and
    anomalib's VisA binarization see it). The size must equal the image's: the error names both files."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                img = img.convert("L")
            values = np.asarray(img)
    except FileNotFoundError as err:
        raise DatasetError(f"mask {str(path)!r} (for image {str(image_path)!r}) does not exist") from err
    except (UnidentifiedImageError, OSError) as err:
        what = f"mask {str(path)!r} (for image {str(image_path)!r})"
        raise DatasetError(f"{what} is not a readable image: {err}") from err
    if values.shape[:2] != tuple(expected_hw):
        raise DatasetError(
            f"mask {str(path)!r} is {values.shape[1]}x{values.shape[0]} (WxH) but its image {str(image_path)!r} is "
            f"{expected_hw[1]}x{expected_hw[0]}: a mask must have its image's size"
        )
    return (values != 0).astype(np.uint8)


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """float [H, W] -> float32 [1, h, w], nearest as cv2 INTER_NEAREST (source index floor(dst * in / out))."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="nearest")
    return t[0]


class DefectDataset(torch.utils.data.Dataset):
    """Records of one split of one layout -> samples (module docstring). `load(index, flip)` is what the
    balanced sampler's view calls; plain indexing never augments, hence `augmented = False`."""

    augmented = False

    def __init__(
        self,
        records: list[Record],
        config: ModelConfig,
        split: str,
        *,
        source: str,
        dilate: int | None = None,
        dt: tuple[float, float] | None = None,
        good_only: bool = False,
        requires_masks: bool = False,
        check_files: bool = True,
        mask_hint: str = "",
    ) -> None:
        if split not in SPLITS:
            raise DatasetError(f"split={split!r} is unknown; accepted: {', '.join(SPLITS)}")
        if dt is not None and len(tuple(dt)) != 2:
            raise DatasetError(f"dt={dt!r} must be (weight, power), e.g. (3, 2)")
        self.config, self.split, self.source = config, split, source
        self.dilate, self.dt = dilate, (tuple(float(v) for v in dt) if dt is not None else None)
        self.options = dict(dilate=dilate, dt=dt)
        records = [r for r in records if r.label == 0] if good_only else list(records)
        records = [r if r.label else replace(r, mask=None) for r in records]  # good images: zero mask
        if not records:
            raise DatasetError(f"{source}: the {split} split holds no images")
        if requires_masks:
            missing = [str(r.image) for r in records if r.label == 1 and r.mask is None]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise DatasetError(
                    f"{source}: {len(missing)} defective {split} image(s) have no mask but this regime needs masks: "
                    f"{shown}; masks are looked for {mask_hint or 'next to the images'}"
                )
        if check_files:
            for r in records:
                hw = image_size(r.image)
                if r.mask is not None and image_size(r.mask, "mask") != hw:
                    read_mask(r.mask, r.image, hw)  # raises the size error naming both files
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def positive_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labels == 1)

    @property
    def negative_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labels == 0)

    def describe(self) -> str:
        labels = self.labels
        segmented = sum(r.is_segmented for r in self.records if r.label == 1)
        return (
            f"{self.source} [{self.split}]: {int((labels == 0).sum())} good, {int(labels.sum())} defective "
            f"({segmented} with masks used)"
        )

    def subset(self, indices) -> DefectDataset:
        """The same dataset restricted to `indices` (new positions 0..n-1)."""
        records = [self.records[int(i)] for i in indices]
        return DefectDataset(records, self.config, self.split, source=self.source, check_files=False, **self.options)

    def __getitem__(self, index: int) -> dict:
        return self.load(index, 0)

    def load(self, index: int, flip: int = 0) -> dict:
        """Sample `index`, flipped by code `flip` (labels.FLIPS) at the original resolution before resizing."""
        record = self.records[index]
        rgb = read_rgb(record.image)  # uint8 [H, W, 3]
        mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
        if record.mask is not None:
            mask = read_mask(record.mask, record.image, rgb.shape[:2])
            if self.dilate and self.split == "train":
                mask = dilate_mask(mask, self.dilate)
        rgb, mask = apply_flip(rgb, flip), apply_flip(mask, flip)
        size = self.config.image_size
        if self.dt is not None and self.split == "train" and record.label == 1:
            loss_mask = resize_nearest(distance_weights(mask, *self.dt), size)
        else:
            loss_mask = torch.ones(1, *size)
        return {
            "image": to_model_input(rgb, self.config)[0],  # [3, H, W]
            "mask": resize_nearest(mask, size),  # [1, H, W]
            "label": torch.tensor(float(record.label)),
            "is_segmented": torch.tensor(record.is_segmented),
            "loss_mask": loss_mask,  # [1, H, W]
            "path": str(record.image),
            "index": index,
        }


def validation_split(dataset: DefectDataset, fraction: float, seed: int) -> tuple[DefectDataset, DefectDataset]:
    """(rest, validation): a deterministic split stratified by label, for layouts without a validation set.

    Each label keeps round(fraction * n) images for validation, at least one and at most n - 1 when it has two
    or more, so both halves see both labels whenever possible.
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"validation fraction={fraction!r} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        chosen.extend(rng.permutation(members)[:count].tolist())
    val = np.array(sorted(chosen), dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(dataset)), val)
    return dataset.subset(rest), dataset.subset(val)


def _layout_module(name: str):
    key = str(name).lower()
    if key not in DATASETS:
        raise DatasetError(f"dataset {name!r} is unknown; accepted: {', '.join(DATASETS)}")
    return key, importlib.import_module(f"training.data.{DATASETS[key]}")


def available_splits(name: str, root: str | Path | None) -> tuple[str, ...]:
    """The splits a layout has under `root`: ('train', 'test') for the published ones; the folder layout's vary."""
    _, module = _layout_module(name)
    return module.splits(Path(root)) if hasattr(module, "splits") else ("train", "test")


def build_dataset(
    name: str, root: str | Path | None, split: str, config: ModelConfig, category: str | None = None, **options
) -> DefectDataset:
    """The one entry point: `name` in mvtec|visa|ksdd2|sensum|folder|synthetic; `split` in train|val|test.

    Options common to all layouts: dilate (int), dt ((w, p)), good_only, requires_masks, check_files. Layout
    options: ksdd2 num_segmented/split_file; sensum fold/ratio; synthetic seed/size/train/test/categories.
    """
    key, module = _layout_module(name)
    if split not in SPLITS:
        raise DatasetError(f"split={split!r} is unknown; accepted: {', '.join(SPLITS)}")
    fixed = ("root", "split", "config", "category", "common")
    own = [p for p in inspect.signature(module.build).parameters if p not in fixed]
    unknown = sorted(set(options) - set(own) - set(COMMON_OPTIONS))
    if unknown:
        raise DatasetError(
            f"dataset {key!r} has no option(s) {', '.join(unknown)}; accepted: {', '.join(own + list(COMMON_OPTIONS))}"
        )
    if key != "synthetic" and root is None:
        raise DatasetError(f"dataset {key!r} needs a root folder")
    return module.build(Path(root) if root is not None else None, split, config, category, **options)
