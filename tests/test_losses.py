"""Losses (spec §2.2, §8.7): sanity values, official focal form, JIMS masking and weights, global-batch means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import focal_loss
from training.losses import focal_terms
from training.losses import ssn_loss


def official_focal(logits, target, gamma=4.0):
    """The official BCE-on-probabilities form (DeSTSeg), written out for the comparison."""
    p = torch.sigmoid(logits.double())
    ce = F.binary_cross_entropy(p, target.double(), reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return ce * (1 - p_t) ** gamma


def official_icpr_total(seg, score, mask, label):
    normal, anomalous = seg[mask == 0], seg[mask > 0]
    good = (normal + 0.5).clamp(min=0).mean() if normal.numel() else 0
    bad = (-anomalous + 0.5).clamp(min=0).mean() if anomalous.numel() else 0
    return good + bad + official_focal(seg, mask).mean() + official_focal(score, label).mean()


def test_sanity_values_all_zero_logits():
    seg, score = torch.zeros(4, 1, 8, 8), torch.zeros(4)
    mask, label = torch.zeros(4, 1, 8, 8), torch.zeros(4)
    assert float(ssn_loss(seg, score, mask, label).total) == pytest.approx(0.5866434, abs=1e-6)
    mask[2, 0, 3, 3], label[2] = 1, 1
    assert float(ssn_loss(seg, score, mask, label).total) == pytest.approx(1.0866434, abs=1e-6)


def test_focal_from_logits_equals_official_form():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=g) * 4
    target = (torch.rand(1000, generator=g) > 0.5).float()
    torch.testing.assert_close(
        focal_terms(logits, target).double(), official_focal(logits, target), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_focal_with_other_gammas_and_its_mean(gamma):
    """An odd or fractional gamma sees the sign of 1 - p_t (gamma 4 cannot); focal_loss is the mean of the terms."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(500, generator=g) * 3
    target = (torch.rand(500, generator=g) > 0.5).float()
    torch.testing.assert_close(
        focal_terms(logits, target, gamma).double(), official_focal(logits, target, gamma), atol=1e-6, rtol=1e-5
    )
    assert float(focal_loss(logits, target)) == pytest.approx(float(official_focal(logits, target).mean()), rel=1e-5)
    assert float(focal_loss(logits, target, gamma)) == pytest.approx(
        float(official_focal(logits, target, gamma).mean()), rel=1e-5
    )


def test_icpr_total_equals_official_composition():
    g = torch.Generator().manual_seed(1)
    seg, score = torch.randn(6, 1, 10, 12, generator=g), torch.randn(6, generator=g)
    mask = (torch.rand(6, 1, 10, 12, generator=g) > 0.8).float()
    label = mask.flatten(1).amax(1)
    ours = ssn_loss(seg, score, mask, label).total
    assert float(ours) == pytest.approx(float(official_icpr_total(seg, score, mask, label)), rel=1e-5)
    # an empty side contributes 0
    empty = ssn_loss(seg, score, torch.zeros_like(mask), torch.zeros(6))
    assert float(empty.bad) == 0.0 and float(empty.good) > 0


def test_jims_masking_and_weights():
    g = torch.Generator().manual_seed(2)
    seg, score = torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, generator=g)
    mask = (torch.rand(4, 1, 6, 6, generator=g) > 0.7).float()
    label = mask.flatten(1).amax(1)
    is_seg = torch.tensor([True, False, True, False])
    parts = ssn_loss(seg, score, mask, label, is_seg)
    sub = ssn_loss(seg[is_seg], score[is_seg], mask[is_seg], label[is_seg])
    # seg terms only over segmented samples; cls term over every sample
    for name in ("good", "bad", "seg_focal"):
        assert float(getattr(parts, name)) == pytest.approx(float(getattr(sub, name)), rel=1e-6)
    assert float(parts.cls_focal) == pytest.approx(float(official_focal(score, label).mean()), rel=1e-5)
    # loss_mask multiplies the per-pixel terms before the (unrenormalised) means
    weights = 1 + torch.rand(4, 1, 6, 6, generator=g)
    weighted = ssn_loss(seg, score, mask, label, None, weights)
    l1 = torch.where(mask > 0, (0.5 - seg).clamp(min=0), (seg + 0.5).clamp(min=0)) * weights
    assert float(weighted.good) == pytest.approx(float(l1[mask == 0].mean()), rel=1e-5)
    assert float(weighted.seg_focal) == pytest.approx(float((official_focal(seg, mask) * weights).mean()), rel=1e-5)
    # no segmented sample at all: seg terms are 0 but every head parameter stays in the graph
    none = ssn_loss(seg.requires_grad_(), score, mask, label, torch.zeros(4, dtype=torch.bool))
    none.total.backward()
    assert float((none.good + none.bad + none.seg_focal).detach()) == 0 and seg.grad is not None and not seg.grad.any()


def test_global_counts_make_split_batches_exact():
    """Two halves with all-reduced counts and world_size 2: their averaged gradients are the full batch's."""
    g = torch.Generator().manual_seed(3)
    seg = torch.randn(8, 1, 5, 5, generator=g)
    score = torch.randn(8, generator=g)
    mask = torch.zeros(8, 1, 5, 5)
    mask[1, :, :2] = 1  # unequal anomalous-pixel counts per half
    mask[6, :, :4] = 1
    label = mask.flatten(1).amax(1)
    is_seg = torch.tensor([True, True, False, True, True, True, True, False])

    def grads(sl, reducer, world):
        s, c = seg[sl].clone().requires_grad_(), score[sl].clone().requires_grad_()
        loss = ssn_loss(s, c, mask[sl], label[sl], is_seg[sl], None, reducer, world)
        loss.total.backward()
        return s.grad, c.grad, loss.total.detach()

    full_seg, full_score, full_total = grads(slice(None), None, 1)
    halves = (slice(0, 4), slice(4, 8))
    captured = []

    def capture(t):
        captured.append(t)
        return t

    for h in halves:  # the per-half counts a real all-reduce would sum
        ssn_loss(seg[h], score[h], mask[h], label[h], is_seg[h], None, capture, 1)
    total_counts = captured[0] + captured[1]
    results = [grads(h, lambda _t: total_counts, 2) for h in halves]
    torch.testing.assert_close(torch.cat([r[0] for r in results]) / 2, full_seg, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[1] for r in results]) / 2, full_score, atol=1e-7, rtol=1e-5)
    assert float((results[0][2] + results[1][2]) / 2) == pytest.approx(float(full_total), rel=1e-6)


def test_every_tensor_stays_on_the_inputs_device():
    """On a GPU the counts go to an NCCL all-reduce, which takes only tensors on that GPU, and a CPU-made helper
    tensor would not mix with the inputs. The meta device stands in for the GPU here: any tensor made on the CPU
    meets a meta tensor and raises. The reducer hands back the counts a real all-reduce would (meta has no values)."""
    meta = torch.device("meta")
    seen = []

    def reducer(counts):
        seen.append((counts.device, counts.shape))
        return torch.tensor([24.0, 8.0, 2.0, 2.0])  # good pixels, bad pixels, segmented samples, samples

    seg, mask = torch.empty(2, 1, 4, 4, device=meta), torch.empty(2, 1, 4, 4, device=meta)
    parts = ssn_loss(seg, torch.empty(2, device=meta), mask, torch.empty(2, device=meta), counts_reducer=reducer)
    assert seen == [(meta, (4,))]
    assert all(part.device == meta and part.shape == () for part in parts)
