"""Each published layout reads into the BRIEF sample contract (real files in tmp dirs)."""

from __future__ import annotations

import datafakes
import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.images import read_rgb
from pipeline.images import to_model_input
from training.data.base import available_splits
from training.data.base import build_dataset
from training.data.base import validation_split

CFG = ModelConfig(backbone="resnet18", image_size=(32, 48))  # files are 40x56: both resizes are exercised


def nearest_like_cv2(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2 INTER_NEAREST, written out: source index floor(dst * in / out)."""
    rows = np.floor(np.arange(size[0]) * mask.shape[0] / size[0]).astype(int)
    cols = np.floor(np.arange(size[1]) * mask.shape[1] / size[1]).astype(int)
    return mask[rows][:, cols]


def check_contract(sample: dict, index: int) -> None:
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 32, 48)
    for key in ("mask", "loss_mask"):
        assert sample[key].dtype == torch.float32 and sample[key].shape == (1, 32, 48)
    assert set(torch.unique(sample["mask"]).tolist()) <= {0.0, 1.0}
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == ()
    assert sample["is_segmented"].dtype == torch.bool and sample["is_segmented"].shape == ()
    assert isinstance(sample["path"], str) and sample["index"] == index
    want = to_model_input(read_rgb(sample["path"]), CFG)[0]
    assert torch.equal(sample["image"], want)  # the one image path of pipeline/images.py


def test_mvtec_reads_train_and_test(tmp_path):
    datafakes.mvtec(tmp_path)
    train = build_dataset("mvtec", tmp_path, "train", CFG, category="bottle")
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 0]
    test = build_dataset("mvtec", tmp_path, "test", CFG, category="bottle")
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]  # good first, then defects sorted by type and name
    for i in range(len(test)):
        sample = test[i]
        check_contract(sample, i)
        assert bool(sample["is_segmented"]) and torch.all(sample["loss_mask"] == 1)
    sample = test[3]  # crack/000.png with mask box rows 5..13, cols 7..17 in 40x56
    want = nearest_like_cv2(datafakes.box_mask(5, 7, 9, 11) // 255, (32, 48))
    np.testing.assert_array_equal(sample["mask"][0].numpy(), want)
    assert sample["path"].endswith("crack/000.png") and float(sample["label"]) == 1.0
    assert float(test[0]["mask"].sum()) == 0 and float(test[0]["label"]) == 0.0


def test_visa_one_class_split(tmp_path):
    datafakes.visa(tmp_path)
    for root in (tmp_path, tmp_path / "visa_pytorch"):  # the VisA folder or visa_pytorch itself
        test = build_dataset("visa", root, "test", CFG, category="candle")
        assert test.labels.tolist() == [0, 0, 1, 1]
    sample = test[2]
    check_contract(sample, 2)
    want = nearest_like_cv2(datafakes.box_mask(3, 4, 6, 6) // 255, (32, 48))  # RGB mask file read as one channel
    np.testing.assert_array_equal(sample["mask"][0].numpy(), want)


def test_ksdd2_full_supervision_without_split_file(tmp_path):
    datafakes.ksdd2(tmp_path)
    train = build_dataset("ksdd2", tmp_path, "train", CFG)  # N246: every positive segmented
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 0]  # labels from the GT: all-zero = good
    assert all(bool(train[i]["is_segmented"]) for i in range(len(train)))
    assert float(train[1]["mask"].sum()) > 0
    weak = build_dataset("ksdd2", tmp_path, "train", CFG, num_segmented=0)  # N0: no positive segmented
    sample = weak[1]
    assert float(sample["label"]) == 1 and not bool(sample["is_segmented"]) and float(sample["mask"].sum()) == 0


def test_ksdd2_mixed_split_file(tmp_path):
    datafakes.ksdd2(tmp_path)
    segmented = {"10000": True, "10001": True, "10002": True, "10003": False}  # 10003 is a weak positive
    datafakes.ksdd2_split_file(tmp_path, 16, segmented, ["10000", "10002"])
    train = build_dataset("ksdd2", tmp_path, "train", CFG, num_segmented=16)
    assert [p.split("/")[-1] for p in (train[i]["path"] for i in range(len(train)))] == [f"{k}.png" for k in segmented]
    assert train.labels.tolist() == [0, 1, 0, 1]
    assert [bool(train[i]["is_segmented"]) for i in range(4)] == [True, True, True, False]
    assert float(train[3]["mask"].sum()) == 0
    test = build_dataset("ksdd2", tmp_path, "test", CFG, num_segmented=16)
    assert len(test) == 2 and test.labels.tolist() == [1, 0]


def test_sensum_fold_split_with_numpy_ids(tmp_path):
    datafakes.sensum(tmp_path)
    train = build_dataset("sensum", tmp_path, "train", CFG, category="capsule", fold=1, ratio=1.0)
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert [bool(train[i]["is_segmented"]) for i in (3, 4)] == [True, False]  # (1, False) in pos_100.pckl
    test = build_dataset("sensum", tmp_path, "test", CFG, category="capsule", fold=1)
    assert all(bool(test[i]["is_segmented"]) for i in range(len(test)))  # test positives always segmented
    assert float(test[4]["mask"].sum()) > 0
    good = build_dataset("sensum", tmp_path, "train", CFG, category="capsule", fold=1, good_only=True)
    assert good.labels.tolist() == [0, 0, 0]


def test_folder_layout_with_partial_masks(tmp_path):
    datafakes.folder(tmp_path, good=3, defects=2, masks=1)
    train = build_dataset("folder", tmp_path, "train", CFG)
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert [bool(train[i]["is_segmented"]) for i in range(5)] == [True, True, True, True, False]
    check_contract(train[3], 3)
    assert float(train[3]["mask"].sum()) > 0 and float(train[4]["mask"].sum()) == 0
    assert available_splits("folder", tmp_path) == ("train",)
    datafakes.folder(tmp_path, split="val", good=1, defects=1, masks=1)
    assert available_splits("folder", tmp_path) == ("train", "val")
    assert available_splits("mvtec", tmp_path) == ("train", "test")


def test_dilation_and_distance_weights_apply_to_training_positives(tmp_path):
    datafakes.ksdd2(tmp_path)
    plain = build_dataset("ksdd2", tmp_path, "train", CFG)
    jims = build_dataset("ksdd2", tmp_path, "train", CFG, dilate=7, dt=(3, 2))
    assert float(jims[1]["mask"].sum()) > float(plain[1]["mask"].sum())  # dilated by 3 pixels on each side
    weights = jims[1]["loss_mask"]
    assert float(weights.max()) == pytest.approx(3.0, abs=0.05) and float(weights.min()) < 1
    assert torch.all(weights[jims[1]["mask"] == 0] == 1)
    assert torch.all(jims[0]["loss_mask"] == 1)  # good images: all ones
    test = build_dataset("ksdd2", tmp_path, "test", CFG, dilate=7, dt=(3, 2))  # eval split: untouched
    assert torch.equal(test[0]["mask"], build_dataset("ksdd2", tmp_path, "test", CFG)[0]["mask"])
    assert torch.all(test[0]["loss_mask"] == 1)


def test_validation_split_is_stratified_and_deterministic(tmp_path):
    datafakes.mvtec(tmp_path, good=6, defects=("a", "b"), per_defect=3)
    test = build_dataset("mvtec", tmp_path, "test", CFG, category="bottle")
    rest, val = validation_split(test, 0.34, seed=3)
    rest2, val2 = validation_split(test, 0.34, seed=3)
    assert [r.image for r in val.records] == [r.image for r in val2.records]
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1] and len(rest) == len(test) - 4
    assert not {r.image for r in val.records} & {r.image for r in rest.records}
    assert val[1]["index"] == 1  # positions in the subset
    _, other = validation_split(test, 0.34, seed=4)
    assert [r.image for r in other.records] != [r.image for r in val.records]
