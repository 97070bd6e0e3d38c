"""Label processing at the original image resolution (spec §2.4, §2.5): flips, dilation, distance-transform weights.

Semantics of the authors' JIMS code (`datamodules/base/dataset.py` at OFF-JIMS), which took the weights from
SegDecNet (mixed-segdec-net `data/dataset.py`, where the transform ran on the whole mask at once; the JIMS version
runs it per 8-connected component):
- `dilate`: `cv2.dilate(mask, ones(k, k))` on the training masks of segmented positives, before any flip;
- `dt=(w, p)`: for each 8-connected component, the Euclidean distance to the nearest non-component pixel,
  divided by its maximum, raised to `p`, times `w`; components are summed; background pixels weigh 1. Computed
  after the flip, then resized with the mask (nearest). Normal images get all ones.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# flip codes of the balanced supervised epoch, in the authors' index-block order
FLIPS = ("none", "vflip", "hflip", "rot180")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def apply_flip(array: np.ndarray, flip: int) -> np.ndarray:
    """[H, W, ...] -> the same array flipped: 0 none, 1 vertical, 2 horizontal, 3 rotated by 180 degrees.

    albumentations `Rotate(limit=(180, 180))` rotates about the pixel-grid centre, so on the pixel grid it is an
    exact 180 degree rotation (= vertical + horizontal flip), which is what this does.
    """
    if flip == 0:
        return array
    if flip == 1:
        out = array[::-1]
    elif flip == 2:
        out = array[:, ::-1]
    elif flip == 3:
        out = array[::-1, ::-1]
    else:
        raise ValueError(f"flip={flip!r} must be one of 0..3 ({', '.join(FLIPS)})")
    return np.ascontiguousarray(out)


def dilate_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask [H, W] -> dilated with a size x size square (cv2.dilate with np.ones((size, size)))."""
    if size < 1:
        raise ValueError(f"dilate={size!r} must be a positive kernel size")
    if size == 1:
        return mask.copy()
    # cv2 anchors a k x k kernel at k // 2 and ignores pixels outside the image; scipy's centred maximum filter
    # with a zero border does the same on a non-negative mask
    return ndimage.maximum_filter(mask, size=size, mode="constant", cval=0)


def distance_weights(mask: np.ndarray, weight: float = 3.0, power: float = 2.0) -> np.ndarray:
    """Binary mask [H, W] -> float32 loss weights [H, W]: w * (EDT / max EDT)^p per 8-connected component, 1 outside.

    Defect centres weigh `weight`, pixels on a defect's rim weigh `weight / max_edt^p`, background 1.
    """
    defect = mask > 0
    out = np.ones(defect.shape, dtype=np.float64)
    labels, count = ndimage.label(defect, structure=EIGHT_CONNECTED)
    if count == 0:
        return out.astype(np.float32)
    h, w = defect.shape
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        # the component's box grown by one pixel (not past the image edge, where scipy sees no background):
        # its nearest background pixel always lies inside, so the EDT there equals the full-image EDT
        rows = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, h))
        cols = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, w))
        component = labels[rows, cols] == number
        edt = ndimage.distance_transform_edt(component)
        peak = edt.max()
        if peak > 0:
            edt = (edt / peak) ** power * weight
        out[rows, cols][component] = edt[component]
    return out.astype(np.float32)
