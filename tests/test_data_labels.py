"""JIMS label processing: dilation as cv2.dilate, distance-transform weights per 8-connected component, flips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.data.labels import apply_flip
from training.data.labels import dilate_mask
from training.data.labels import distance_weights


def test_distance_weights_hand_made_mask():
    mask = np.zeros((15, 20), np.uint8)
    mask[4:11, 2:9] = 1  # 7x7 square: EDT 1 on its rim, 4 at its centre
    mask[6:9, 14:17] = 1  # 3x3 square: EDT 1 on its rim, 2 at its centre; normalized on its own
    w = distance_weights(mask, 3.0, 2.0)
    assert w.dtype == np.float32 and w.shape == mask.shape
    assert w[7, 5] == pytest.approx(3.0) and w[7, 15] == pytest.approx(3.0)  # centres weigh w
    assert w[4, 5] == pytest.approx(3 * (1 / 4) ** 2) and w[6, 15] == pytest.approx(3 * (1 / 2) ** 2)  # rims ~ 0
    assert w[5, 5] == pytest.approx(3 * (2 / 4) ** 2)
    assert np.all(w[mask == 0] == 1.0)  # background 1
    assert np.all(distance_weights(np.zeros((5, 5), np.uint8)) == 1.0)  # a normal image: all ones


def test_distance_weights_equal_the_authors_full_image_form():
    """Per component: EDT of (labels == k) over the whole image, / max, ^p, * w, summed; background 1."""
    rng = np.random.default_rng(0)
    for trial in range(5):
        mask = (ndimage.gaussian_filter(rng.standard_normal((48, 40)), 2.5) > 0.35).astype(np.uint8)
        mask[0, :7] = 1  # a component touching the image edge
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        want = np.zeros(mask.shape)
        for k in range(1, count + 1):
            edt = ndimage.distance_transform_edt(np.where(labels == k, 255, 0))
            want += (edt / edt.max()) ** 2 * 3
        want[mask == 0] = 1
        np.testing.assert_allclose(distance_weights(mask, 3, 2), want.astype(np.float32), rtol=1e-6, err_msg=str(trial))


def test_components_are_eight_connected():
    mask = np.zeros((9, 9), np.uint8)
    mask[2:4, 2:4] = 1
    mask[4:7, 4:7] = 1  # touches the first square diagonally: one component, one normalization
    w = distance_weights(mask, 3, 2)
    assert w[5, 5] == pytest.approx(3.0) and w[2, 2] == pytest.approx(3 * 0.5**2)


def brute_force_dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """cv2.dilate with ones((k, k)) and the default anchor (k // 2), border pixels ignored."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            window = mask[max(y - k // 2, 0) : y - k // 2 + k, max(x - k // 2, 0) : x - k // 2 + k]
            out[y, x] = window.max() if window.size else 0
    return out


@pytest.mark.parametrize("k", [7, 4, 1])
def test_dilation_matches_cv2_semantics(k):
    mask = np.zeros((12, 14), np.uint8)
    mask[5, 6] = 1
    mask[0, 13] = 1  # at a corner: clipped
    mask[11, 0] = 1
    got = dilate_mask(mask, k)
    np.testing.assert_array_equal(got, brute_force_dilate(mask, k))
    if k == 7:
        assert got[2:9, 3:10].all() and got.sum() == 49 + 16 + 16 - 1  # one shared pixel at (8, 3)


def test_flips_are_exact():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(apply_flip(a, 0), a)
    np.testing.assert_array_equal(apply_flip(a, 1), a[::-1])
    np.testing.assert_array_equal(apply_flip(a, 2), a[:, ::-1])
    np.testing.assert_array_equal(apply_flip(a, 3), np.rot90(a, 2))
    with pytest.raises(ValueError, match="flip=4"):
        apply_flip(a, 4)
