"""Inference-time folding of SuperSimpleNet's heads into a few linear maps (kernels.md §0.5, §6 F3, §7).

Every step is exact in real arithmetic; everything is composed in float64 from the trained module and cast once.

    seg:  adaptor -> seg conv 1x1 -> BatchNorm (eval)   = one affine map  W_seg = D_s W_s W_a, b_seg
          applied per layer at native resolution, resampled (resize + 3x3 pool, separable) to the feature grid
    cls:  the 5x5 conv on [F_cls, M'] splits into its C feature channels and the map channel. F_cls is linear in
          the backbone features (JIMS: P; ICPR: W_a P + b_a), so per tap t: V_t = D_c W_t^F (W_a); the 25 taps'
          channel mixing is one GEMM per layer (25 x 128 outputs), then resample + tap shift (zero fill) + sum.
          The map channel is a 1->128 5x5 stencil; conv bias, BN and (ICPR) the border-dependent adaptor-bias
          term fold into one [128, fh, fw] bias map.
    post: upsample + blur as two matrices (kernels/reference.py)

The 1-D operators come from kernels/reference.py (identity bases pushed through the reference functions).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels import reference
from pipeline.model import CLS_HIDDEN
from pipeline.model import SEG_HIDDEN
from pipeline.model import SuperSimpleNet

TAPS = 5  # the cls conv's kernel size (padding "same": 2 on every side)
SEG_SLOPE = 0.2  # LeakyReLU of the seg head
_SEG_TYPES = ("Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d")  # seg_head
_CLS_TYPES = ("Conv2d", "BatchNorm2d", "ReLU", "Linear")  # cls_head.conv, cls_head.fc


class UnsupportedModelError(ValueError):
    """The module is not one the folding covers (wrong type, mode or layer hyperparameters)."""


def _require(checks: list[tuple[str, object, object]]) -> None:
    for where, found, expected in checks:
        if found != expected:
            raise UnsupportedModelError(
                f"cannot fold this model: {where} is {found!r}, the folded graph needs {expected!r}"
            )


def check_foldable(model: nn.Module) -> None:
    """Refuse anything the folding would get silently wrong: training mode, other layer types or settings."""
    if not isinstance(model, SuperSimpleNet):
        raise UnsupportedModelError(f"cannot fold a {type(model).__name__}; FoldedSSN folds a SuperSimpleNet")
    if model.training:
        raise UnsupportedModelError(
            "cannot fold a model in training mode (BatchNorm would use batch statistics); call model.eval() first"
        )
    c = model.config.feature_channels
    seg, cls = model.seg_head, model.cls_head
    conv = cls.conv[0]
    layers = [type(m).__name__ for m in (*seg, *cls.conv, cls.fc)]
    _require([("seg_head/cls_head layer types", layers, [*_SEG_TYPES, *_CLS_TYPES])])
    _require(
        [
            ("adaptor (in, out, kernel, bias)", _conv_spec(model.adaptor), (c, c, (1, 1), True)),
            ("seg_head[0] (in, out, kernel, bias)", _conv_spec(seg[0]), (c, SEG_HIDDEN, (1, 1), True)),
            ("seg_head[2].negative_slope", seg[2].negative_slope, SEG_SLOPE),
            ("seg_head[3] (in, out, kernel, bias)", _conv_spec(seg[3]), (SEG_HIDDEN, 1, (1, 1), False)),
            ("cls_head.conv[0] (in, out, kernel, bias)", _conv_spec(conv), (c + 1, CLS_HIDDEN, (TAPS, TAPS), True)),
            ("cls_head.conv[0].padding is 'same'", conv.padding in ("same", (TAPS // 2, TAPS // 2)), True),
            ("cls_head.conv[0].padding_mode", conv.padding_mode, "zeros"),
            ("cls_head.fc (in, out)", (cls.fc.in_features, cls.fc.out_features), (2 * CLS_HIDDEN + 2, 1)),
        ]
    )
    for name, bn in (("seg_head[1]", seg[1]), ("cls_head.conv[1]", cls.conv[1])):
        _require([(f"{name} has running stats and affine", bn.running_var is not None and bn.affine, True)])


def _conv_spec(conv: nn.Conv2d) -> tuple:
    same_geometry = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
    kernel = tuple(conv.kernel_size) if same_geometry else ("stride/dilation/groups", conv.stride)
    return conv.in_channels, conv.out_channels, kernel, conv.bias is not None


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # eval BatchNorm as y = scale * x + shift
    scale = _f64(bn.weight) / torch.sqrt(_f64(bn.running_var) + bn.eps)
    return scale, _f64(bn.bias) - _f64(bn.running_mean) * scale


def fold_heads(model: SuperSimpleNet) -> dict[str, torch.Tensor]:
    """Folded head weights, float64, on the model's device (names as FoldedSSN's buffers)."""
    check_foldable(model)
    cfg = model.config
    c2 = cfg.channels[0]
    fh, fw = cfg.feature_size
    w_a, b_a = _f64(model.adaptor.weight).flatten(1), _f64(model.adaptor.bias)  # [C, C], [C]
    seg, cls = model.seg_head, model.cls_head

    # seg: BN(W_s (W_a P + b_a) + b_s) = W_seg P + b_seg
    scale, shift = _bn_scale_shift(seg[1])
    w_s = _f64(seg[0].weight).flatten(1)  # [1024, C]
    w_seg = scale[:, None] * (w_s @ w_a)  # [1024, C]
    b_seg = scale * (w_s @ b_a + _f64(seg[0].bias)) + shift  # [1024]

    # cls: BN(conv5x5([F_cls, M'])) with F_cls = P (JIMS) or W_a P + b_a (ICPR)
    scale_c, shift_c = _bn_scale_shift(cls.conv[1])
    w_c = _f64(cls.conv[0].weight)  # [128, C + 1, 5, 5]
    w_feat = w_c[:, :-1].permute(0, 2, 3, 1)  # [128, dy, dx, C]
    taps = w_feat @ w_a if cfg.adapt_cls_features else w_feat  # V_t: [128, dy, dx, C]
    taps = (scale_c[:, None, None, None] * taps).permute(2, 1, 0, 3).reshape(-1, taps.shape[-1]).T  # [C, (dx,dy,o)]
    bias = scale_c * _f64(cls.conv[0].bias) + shift_c  # [128]
    bias_map = bias.expand(fh, fw, CLS_HIDDEN)
    if cfg.adapt_cls_features:  # sum over in-bounds taps of W_t^F b_a: differs within 2 pixels of the border
        per_tap = torch.einsum("oyxc,c->oyx", w_feat, b_a)  # [128, 5, 5]
        rows, cols = (reference.tap_in_bounds_f64(n, TAPS).to(w_c.device) for n in (fh, fw))  # [5, fh], [5, fw]
        bias_map = bias_map + scale_c * torch.einsum("oyx,yf,xg->fgo", per_tap, rows, cols)

    # layouts for channels-last activations (x [B, h, w, C] @ weight [C, N]); see FoldedSSN
    return {
        "seg_w2": w_seg[:, :c2].T,  # [C2, 1024]
        "seg_w3": w_seg[:, c2:].T,  # [C3, 1024]
        "seg_bias": b_seg,  # [1024]
        "seg_out": _f64(seg[3].weight).reshape(SEG_HIDDEN, 1),  # [1024, 1]
        "cls_w2": taps[:c2],  # [C2, (dx, dy, o)]
        "cls_w3": taps[c2:],  # [C3, (dx, dy, o)]
        "cls_map_w": scale_c[:, None, None, None] * w_c[:, -1:],  # [128, 1, 5, 5]
        "cls_bias": bias_map,  # [fh, fw, 128]
        "fc_w": _f64(cls.fc.weight),  # [1, 258]
        "fc_b": _f64(cls.fc.bias),  # [1]
    }


def resample_operators(cfg) -> dict[str, torch.Tensor]:
    """The per-resolution 1-D operators (float64, CPU) in the layouts the folded graph's matmuls consume."""
    (h2, w2), (h3, w3) = cfg.layer_sizes
    fh, fw = cfg.feature_size
    ac = cfg.align_corners
    rp = reference.resize_pool_matrix_f64
    shift = reference.resize_pool_shift_f64
    cls_rows = torch.cat([shift(h2, fh, ac, TAPS), shift(h3, fh, ac, TAPS)], dim=2)  # [dy, fh, h2 + h3]
    ones = torch.ones(fh, 1, dtype=torch.float64)  # the seg bias enters the row matmul as one more input row

    def cls_cols(n):  # [fw, (w, dx)]
        return shift(n, fw, ac, TAPS).permute(1, 2, 0).reshape(fw, n * TAPS)

    return {
        "seg_rows": torch.cat([rp(h2, fh, ac), rp(h3, fh, ac), ones], dim=1),  # [fh, h2 + h3 + 1]
        "seg_cols2": rp(w2, fw, ac),  # [fw, w2]
        "seg_cols3": rp(w3, fw, ac),  # [fw, w3]
        "cls_rows": cls_rows.permute(1, 0, 2).reshape(fh, TAPS * (h2 + h3)),  # [fh, (dy, h)]
        "cls_cols2": cls_cols(w2),  # [fw, (w2, dx)]
        "cls_cols3": cls_cols(w3),  # [fw, (w3, dx)]
        "map_rows": reference.upsample_blur_matrix_f64(fh, cfg.image_size[0], cfg.sigma),  # [H, fh]
        "map_cols": reference.upsample_blur_matrix_f64(fw, cfg.image_size[1], cfg.sigma).T,  # [fw, W]
    }
