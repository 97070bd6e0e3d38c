"""AUPRO to FPR 0.3 with anomalib 0.7 semantics, exact, in bounded memory.

What anomalib 0.7 (`utils/metrics/aupro.py`, used by the authors' `train.py`) computes, on maps already min-max
normalised over the test set (spec §3):
1. Label the 8-connected regions of the ground truth of every image; labels are unique across images.
2. Global ROC of all pixels against all defect pixels; `output_size` G = its number of points with FPR <= 0.3
   (torchmetrics' ROC starts at (0, 0) and has one point per distinct score).
3. For each region r, the ROC of {every defect-free pixel of the test set} U {pixels of r}: keep its points up to
   FPR 0.3, add the next point and interpolate linearly at FPR exactly 0.3 unless the last kept FPR is allclose to
   0.3, then resample TPR and FPR onto a common grid of G points (linear in the point index).
4. Average TPR and FPR over the regions; AUPRO = trapezoid area (points sorted by FPR) / last averaged FPR.

How it is done here without a ROC per region over all pixels: every per-region ROC shares the defect-free pixels, so
they are sorted once. A region's ROC to FPR 0.3 is the background's distinct scores above the cut-off score with the
region's own scores inserted, so each region costs O(points to FPR 0.3 + region size), not a sort of the test set.
Memory: the background scores (float32), the label image (int32) and a few arrays of G entries.

Numerics: counts are exact integers; FPR comparisons with 0.3 (the point count G, the "allclose to 0.3" test) use
torchmetrics' float32 quotients, so discrete choices match anomalib; resampling and areas are float64 (anomalib
works in float32: expect differences around 1e-6).

API: `aupro(maps, masks) -> (value, None) | (None, reason)`; or `split_pixels(maps, masks)` once (the sorted
defect-free scores and the per-region defect scores, shared with P-AUROC and AP-loc) and `aupro_of(pixels)`.

Undefined cases return (None, reason) instead of NaN: no defect pixels, no defect-free pixels, or no operating point
with 0 < FPR <= 0.3 (more than 30% of the defect-free pixels share the top score, e.g. a constant map; anomalib 0.7
returns NaN or integrates past the limit there). A map that ranks every defect pixel above every defect-free one
gets 1 up to the index-grid resampling (about 1e-5 below), unless its defect-free pixels all tie (binary map):
that is the undefined case above.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

FPR_LIMIT = 0.3
_CHUNK = 1 << 20  # grid points resampled at once


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """masks: [N, H, W] bool -> (labels int32 [N, H, W], count). 8-connected per image, labels 1..count unique."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside each image, none across images
    labels, count = ndimage.label(masks, structure=structure, output=np.int32)
    return labels, int(count)


def _fpr32(false_positives, negatives: int):
    """FPR as torchmetrics computes it: float32 counts divided in float32."""
    return np.float32(false_positives) / np.float32(negatives)


class _Background(NamedTuple):
    """The defect-free pixels down to the FPR cut-off, shared by every region's ROC."""

    values: np.ndarray  # [D + 1] float32: distinct scores > cut-off (descending), then the cut-off score itself
    at_or_above: np.ndarray  # [D + 2] int32 (int64 past 2^31 pixels): [0, #bg >= values[0], #bg >= values[1], ...]
    count: int  # number of defect-free pixels
    cut: float  # the cut-off score: the largest score whose FPR exceeds the limit


def _background(bg_sorted: np.ndarray, fpr_limit: float) -> _Background | str:
    """bg_sorted: [Nbg] ascending. Returns the shared background, or a reason why AUPRO is undefined."""
    count = bg_sorted.size
    limit32 = np.float32(fpr_limit)
    # largest false-positive count whose float32 FPR is still <= the limit
    most = min(int(fpr_limit * count * (1 + 1e-6)) + 2, count)
    while most > 0 and _fpr32(most, count) > limit32:
        most -= 1
    cut = bg_sorted[count - 1 - most]  # (most + 1)-th largest score: thresholds above it keep FPR <= limit
    above = bg_sorted[np.searchsorted(bg_sorted, cut, side="right") :]  # ascending, all > cut
    if above.size == 0:
        top_share = (count - np.searchsorted(bg_sorted, bg_sorted[-1], side="left")) / count
        return (
            f"no operating point with 0 < FPR <= {fpr_limit}: {top_share:.1%} of the defect-free pixels share the "
            "highest score (e.g. a constant or saturated map); anomalib 0.7 returns NaN or integrates past the limit"
        )
    desc = above[::-1]
    starts = np.flatnonzero(np.r_[True, desc[1:] != desc[:-1]])  # first index of each distinct value
    ends = np.r_[starts[1:], desc.size]  # #bg >= value = index after its run
    n_cut = int(np.searchsorted(bg_sorted, cut, side="right") - np.searchsorted(bg_sorted, cut, side="left"))
    values = np.r_[desc[starts], np.float32(cut)].astype(np.float32)
    count_type = np.int32 if count < 2**31 else np.int64
    at_or_above = np.r_[0, ends, desc.size + n_cut].astype(count_type)
    return _Background(values, at_or_above, count, float(cut))


def _count_greater(sorted_desc: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """#entries of sorted_desc strictly greater than each query."""
    return sorted_desc.size - np.searchsorted(sorted_desc[::-1], queries, side="right")


def _region_curve(bg: _Background, region_asc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC of (background U region) down to the cut-off score: (fp counts, tp counts), [K + 2] each.

    Point 0 is the origin; points 1..K+1 are the distinct scores of the union that are >= the cut-off, descending,
    so K points have FPR <= limit and point K + 1 (the cut-off score) is the first beyond it.
    """
    d = bg.values.size - 1  # distinct background scores above the cut-off
    distinct = np.unique(region_asc[region_asc > bg.cut])[::-1]  # descending
    rank = _count_greater(bg.values, distinct)  # #distinct bg scores above each (<= d: all are > the cut-off)
    own = bg.values[rank] != distinct  # region-only scores: new ROC points inserted into the background's
    own_values, own_rank = distinct[own], rank[own]
    # background point k sits at index k + 1 of at_or_above; an own score goes before the first bg score below it
    fp = np.insert(bg.at_or_above, 1 + own_rank, bg.at_or_above[own_rank])
    # region scores >= background score k: those with at most k greater background scores
    tp_bg = np.bincount(_count_greater(bg.values, region_asc[region_asc >= bg.cut]), minlength=d + 2)
    tp_bg[0], tp_bg[1:] = 0, tp_bg[:-1].cumsum()  # [origin, bg score 0..d]
    tp_own = region_asc.size - np.searchsorted(region_asc, own_values, side="left")
    tp = np.insert(tp_bg.astype(fp.dtype), 1 + own_rank, tp_own)
    return fp, tp


class PixelScores(NamedTuple):
    """All pixels of an evaluation, split once: the sort of the defect-free scores is shared by every pixel metric."""

    background: np.ndarray  # [Nbg] float32, ascending: scores of all defect-free pixels
    defect: np.ndarray  # [Npos] float32: scores of all defect pixels, grouped by region, ascending in each region
    region: np.ndarray  # [Npos] int32: region label (1..regions) of each defect pixel, non-decreasing
    regions: int  # number of 8-connected defect regions


def split_pixels(maps: np.ndarray, masks: np.ndarray) -> PixelScores:
    """maps: [N, H, W] float32, masks: [N, H, W] bool -> PixelScores (a sorted copy of the background scores)."""
    labels, regions = label_regions(masks)
    flat_labels, flat_maps = labels.reshape(-1), maps.reshape(-1)
    background = flat_maps[flat_labels == 0]  # a copy, sorted in place
    background.sort()
    defect_at = np.flatnonzero(flat_labels)
    region, defect = flat_labels[defect_at], flat_maps[defect_at]
    del labels, flat_labels, defect_at
    order = np.lexsort((defect, region))  # by region, then score ascending
    return PixelScores(background, defect[order], region[order], regions)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = FPR_LIMIT) -> tuple[float | None, str | None]:
    """maps: [N, H, W] float32 (min-max normalised), masks: [N, H, W] bool -> (AUPRO, None) or (None, reason)."""
    return aupro_of(split_pixels(maps, masks), fpr_limit)


def aupro_of(pixels: PixelScores, fpr_limit: float = FPR_LIMIT) -> tuple[float | None, str | None]:
    """AUPRO from split pixels -> (value, None) or (None, reason)."""
    if not 0.0 < fpr_limit < 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1), got {fpr_limit}")
    if pixels.regions == 0:
        return None, "no defect pixels in the ground truth: AUPRO needs at least one defect region"
    if pixels.background.size == 0:
        return None, "no defect-free pixels: AUPRO's false-positive rate is undefined"
    bg = _background(pixels.background, fpr_limit)
    if isinstance(bg, str):
        return None, bg
    scores, n_regions = pixels.defect, pixels.regions
    bounds = np.searchsorted(pixels.region, np.arange(1, n_regions + 2))
    # output_size: global ROC points with FPR <= limit = origin + distinct scores of all pixels above the cut-off
    pos_above = np.unique(scores[scores > bg.cut])
    in_bg = bg.values[_count_greater(bg.values, pos_above)] == pos_above
    grid = 1 + (bg.values.size - 1) + int(np.count_nonzero(~in_bg))

    # the last kept point and the first beyond the limit have the same FPR for every region (shared background)
    fpr_last = _fpr32(bg.at_or_above[-2], bg.count)
    fpr_next = _fpr32(bg.at_or_above[-1], bg.count)
    limit32 = np.float32(fpr_limit)
    interpolate = not abs(float(fpr_last) - float(limit32)) <= 1e-8 + 1e-5 * float(limit32)  # torch.allclose
    fraction = 1.0 - (float(fpr_next) - float(limit32)) / (float(fpr_next) - float(fpr_last))

    tpr_sum = np.zeros(grid, dtype=np.float64)
    fp_sum = np.zeros(grid, dtype=np.float64)  # false-positive counts, divided by the background once at the end
    grid_index = np.arange(grid, dtype=np.float64)
    point_index = np.arange(grid + 1, dtype=np.float64)  # a curve has at most grid + 1 points used
    for r in range(n_regions):
        region = scores[bounds[r] : bounds[r + 1]]
        fp, tp = _region_curve(bg, region)
        last = fp.size - 1 if interpolate else fp.size - 2  # index of the last point used
        used = point_index[: last + 1]
        for start in range(0, grid, _CHUNK):  # chunks bound the temporaries
            stop = min(start + _CHUNK, grid)
            # sample positions in point-index units: the common grid stretched onto this curve's points
            where = grid_index[start:stop] * (last / (grid - 1))
            if stop == grid:
                where[-1] = (last - 1 + fraction) if interpolate else last
            tpr_sum[start:stop] += np.interp(where, used, tp[: last + 1]) / region.size
            fp_sum[start:stop] += np.interp(where, used, fp[: last + 1])
    fpr_sum = fp_sum / bg.count
    tpr, fpr = tpr_sum / n_regions, fpr_sum / n_regions
    order = np.argsort(fpr, kind="stable")  # torchmetrics auc(reorder=True)
    area = np.trapz(tpr[order], fpr[order])
    return float(area / fpr[-1]), None
