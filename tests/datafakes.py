"""Small real dataset trees written to tmp dirs: every published layout, with masks (tests only)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 56  # file size; the tests' ModelConfig resizes to (32, 48)


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box_mask(top: int, left: int, height: int, width: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[top : top + height, left : left + width] = 255
    return mask


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def mvtec(root: Path, category: str = "bottle", good: int = 3, defects=("crack", "scratch"), per_defect: int = 2):
    cat = root / category
    for i in range(good):
        save(rgb(i), cat / "train" / "good" / f"{i:03}.png")
        save(rgb(100 + i), cat / "test" / "good" / f"{i:03}.png")
    for d, defect in enumerate(defects):
        for i in range(per_defect):
            save(rgb(200 + 10 * d + i), cat / "test" / defect / f"{i:03}.png")
            save(box_mask(5 + i, 7, 9, 11), cat / "ground_truth" / defect / f"{i:03}_mask.png")
    return cat


def visa(root: Path, category: str = "candle", good: int = 2, bad: int = 2) -> Path:
    cat = root / "visa_pytorch" / category
    for i in range(good):
        save(rgb(i), cat / "train" / "good" / f"{i:04}.JPG")
        save(rgb(50 + i), cat / "test" / "good" / f"{i:04}.JPG")
    for i in range(bad):
        save(rgb(80 + i), cat / "test" / "bad" / f"{100 + i:03}.JPG")
        save(np.repeat(box_mask(3, 4, 6, 6)[..., None], 3, axis=2), cat / "ground_truth" / "bad" / f"{100 + i:03}.png")
    return cat


def ksdd2(root: Path, train_pos=(1, 3), train_n: int = 6, test_pos=(0,), test_n: int = 3) -> Path:
    """ids 10000+: positives have a box in their _GT.png, the others an all-zero GT."""
    for split, count, pos in (("train", train_n, train_pos), ("test", test_n, test_pos)):
        for i in range(count):
            name = f"{10000 + i}"
            save(rgb(i + (0 if split == "train" else 500)), root / split / f"{name}.png")
            gt = box_mask(4, 4 + i, 8, 8) if i in pos else np.zeros((H, W), np.uint8)
            save(gt, root / split / f"{name}_GT.png")
    return root


def ksdd2_split_file(root: Path, n: int, segmented_train: dict[str, bool], test_ids: list[str]) -> Path:
    path = root / f"split_weakly_{n}.pyb"
    with path.open("wb") as f:
        pickle.dump(([(k, v) for k, v in segmented_train.items()], [(k, True) for k in test_ids]), f)
    return path


def sensum(root: Path, category: str = "capsule", fold: int = 1, neg=(0, 1, 2), pos=((0, True), (1, False))):
    cat = root / category
    for i in neg:
        save(rgb(i), cat / "negative" / "data" / f"{i:03}.png")
    for i, _ in pos:
        save(rgb(300 + i), cat / "positive" / "data" / f"{i:03}.png")
        save(box_mask(6, 6, 10, 12), cat / "positive" / "annotation" / f"{i:03}.png")
    for split in ("train", "test"):
        folder = root / "sensum_splits" / category / str(fold) / split
        folder.mkdir(parents=True, exist_ok=True)
        # numpy integer ids, as pickles made from numpy arrays hold them
        negs = [(np.int64(i), True) for i in neg]
        with (folder / "neg.pckl").open("wb") as f:
            pickle.dump(negs, f)
        name = "pos.pckl" if split == "test" else "pos_100.pckl"
        with (folder / name).open("wb") as f:
            pickle.dump([(int(i), s) for i, s in pos], f)
    return root


def folder(root: Path, good: int = 3, defects: int = 2, masks: int = 1, split: str = "train") -> Path:
    for i in range(good):
        save(rgb(i), root / split / "good" / f"g{i}.png")
    for i in range(defects):
        save(rgb(700 + i), root / split / "defect" / f"d{i}.jpg")
    for i in range(masks):
        save(box_mask(2, 2, 5, 5), root / split / "masks" / f"d{i}_mask.png")
    return root
