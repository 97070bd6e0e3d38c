"""Bad datasets fail with a message naming the file or folder (and the expected tree for layout problems)."""

from __future__ import annotations

import os
import pickle

import datafakes
import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.images import ImageReadError
from training.data.base import DatasetError
from training.data.base import build_dataset
from training.data.pickles import UnsafePickleError
from training.data.pickles import load_split_pickle

CFG = ModelConfig(backbone="resnet18", image_size=(32, 48))


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        build_dataset(*args, **kwargs)
    return str(info.value)


def test_missing_root_prints_path_and_tree(tmp_path):
    message = error_of("mvtec", tmp_path / "nowhere", "train", CFG, category="bottle")
    assert str(tmp_path / "nowhere") in message and "not found" in message
    assert "expected layout:" in message and "ground_truth/<defect>/<stem>_mask.png" in message
    message = error_of("ksdd2", tmp_path / "ksdd", "train", CFG)
    assert str(tmp_path / "ksdd") in message and "split_weakly_<N>.pyb" in message


def test_unknown_category_lists_the_found_ones(tmp_path):
    datafakes.mvtec(tmp_path, category="bottle")
    datafakes.mvtec(tmp_path, category="cable")
    message = error_of("mvtec", tmp_path, "train", CFG, category="botle")
    assert "category 'botle' not found" in message and "bottle, cable" in message and str(tmp_path) in message
    assert "capsule" in error_of("sensum", tmp_path, "train", CFG, category="pill")


def test_mislaid_folder_empty_good_folder(tmp_path):
    cat = datafakes.mvtec(tmp_path)
    for png in (cat / "train" / "good").iterdir():
        png.unlink()
    message = error_of("mvtec", tmp_path, "train", CFG, category="bottle")
    assert "holds no images" in message and str(cat / "train" / "good") in message and "expected layout" in message
    datafakes.folder(tmp_path / "user")
    (tmp_path / "user" / "train").rename(tmp_path / "user" / "training")
    message = error_of("folder", tmp_path / "user", "train", CFG)
    assert str(tmp_path / "user" / "train") in message and "good/" in message and "masks/" in message


def test_corrupt_image_and_mask_name_the_file(tmp_path):
    cat = datafakes.mvtec(tmp_path)
    bad = cat / "test" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG broken")
    message = error_of("mvtec", tmp_path, "test", CFG, category="bottle")
    assert str(bad) in message and "not a readable image" in message
    # unchecked construction: the read at load time names the file too
    test = build_dataset("mvtec", tmp_path, "test", CFG, category="bottle", check_files=False)
    with pytest.raises(ImageReadError, match="001.png"):
        test[1]
    datafakes.save(datafakes.rgb(1), bad)
    mask = cat / "ground_truth" / "crack" / "000_mask.png"
    mask.write_bytes(b"garbage")
    message = error_of("mvtec", tmp_path, "test", CFG, category="bottle")
    assert str(mask) in message and "mask" in message


def test_mask_of_wrong_size_names_both_files(tmp_path):
    cat = datafakes.mvtec(tmp_path)
    mask = cat / "ground_truth" / "scratch" / "001_mask.png"
    datafakes.save(np.zeros((20, 20), np.uint8), mask)
    message = error_of("mvtec", tmp_path, "test", CFG, category="bottle")
    assert str(mask) in message and str(cat / "test" / "scratch" / "001.png") in message and "20x20" in message


def test_defect_without_mask(tmp_path):
    cat = datafakes.mvtec(tmp_path)
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    message = error_of("mvtec", tmp_path, "test", CFG, category="bottle")
    assert str(cat / "test" / "crack" / "001.png") in message and "001_mask.png" in message
    datafakes.folder(tmp_path / "user", defects=2, masks=1)
    message = error_of("folder", tmp_path / "user", "train", CFG, requires_masks=True)
    assert "needs masks" in message and "d1.jpg" in message and str(tmp_path / "user" / "train" / "masks") in message


def test_raw_visa_download_is_explained(tmp_path):
    (tmp_path / "candle" / "Data" / "Images" / "Normal").mkdir(parents=True)
    (tmp_path / "split_csv").mkdir()
    message = error_of("visa", tmp_path, "train", CFG, category="candle")
    assert "raw VisA download" in message and "prepare_data()" in message and str(tmp_path) in message


def test_split_files_missing_or_bad(tmp_path):
    datafakes.ksdd2(tmp_path)
    message = error_of("ksdd2", tmp_path, "train", CFG, num_segmented=53)
    assert str(tmp_path / "split_weakly_53.pyb") in message
    datafakes.sensum(tmp_path / "sensum")
    message = error_of("sensum", tmp_path / "sensum", "train", CFG, category="capsule", fold=1, ratio=0.5)
    assert str(tmp_path / "sensum" / "sensum_splits" / "capsule" / "1" / "train" / "pos_50.pckl") in message
    message = error_of("sensum", tmp_path / "sensum", "train", CFG, category="capsule", fold=2)
    assert str(tmp_path / "sensum" / "sensum_splits" / "capsule" / "2" / "train") in message


def test_names_options_and_splits_are_checked(tmp_path):
    assert "accepted: mvtec, visa, ksdd2, sensum, folder, synthetic" in error_of("mvtech", tmp_path, "train", CFG)
    datafakes.mvtec(tmp_path)
    message = error_of("mvtec", tmp_path, "train", CFG, category="bottle", fold=1)
    assert "no option(s) fold" in message and "requires_masks" in message
    assert "validation_split" in error_of("mvtec", tmp_path, "val", CFG, category="bottle")
    assert "accepted: train, val, test" in error_of("mvtec", tmp_path, "training", CFG, category="bottle")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "split_weakly_16.pyb"
    evil.write_bytes(pickle.dumps(([("10000", True), _Exploit(marker)], [])))
    with pytest.raises(UnsafePickleError, match="refers to posix.system|refers to os.system"):
        load_split_pickle(evil)
    datafakes.ksdd2(tmp_path)
    with pytest.raises(UnsafePickleError, match="split_weakly_16.pyb"):
        build_dataset("ksdd2", tmp_path, "train", CFG, num_segmented=16)
    assert not marker.exists()
    plain = tmp_path / "ok.pckl"
    plain.write_bytes(pickle.dumps([(np.int64(3), True), (4, False)]))  # numpy scalars are data: accepted
    assert load_split_pickle(plain) == [(3, True), (4, False)]
