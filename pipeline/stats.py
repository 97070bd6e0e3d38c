"""Parameter counts and multiply-accumulate counts per module (spec §1.6).

MACs are counted for convolutions and linear layers (what dominates), by forward hooks on a meta-device
model, so no weights and no real compute are needed. The adaptor and the blur run as functional ops, so their
counts are written out: adaptor C*C per feature pixel; blur k*k per output pixel (the reference 2-D form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.backbone import Backbone
from pipeline.config import ModelConfig
from pipeline.model import SuperSimpleNet


@dataclass(frozen=True)
class ModuleStats:
    name: str
    params: int
    trainable: int
    macs: int  # per image

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


def _conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def build_meta_model(config: ModelConfig) -> SuperSimpleNet:
    with torch.device("meta"):
        return SuperSimpleNet(config, Backbone(config.backbone)).eval()


def model_stats(config: ModelConfig) -> list[ModuleStats]:
    """Per-module stats for one image at config.image_size, plus a 'total' row."""
    model = build_meta_model(config)
    counts: dict[str, int] = {"backbone": 0, "seg_head": 0, "cls_head": 0}
    hooks = []
    for owner in counts:
        for sub in getattr(model, owner).modules():

            def hook(mod, _inp, out, owner=owner):
                counts[owner] += _conv_linear_macs(mod, out)

            hooks.append(sub.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.empty(1, 3, *config.image_size, device="meta"))
    for h in hooks:
        h.remove()

    fh, fw = config.feature_size
    c = config.feature_channels
    counts["adaptor"] = c * c * fh * fw
    counts["postprocess"] = config.blur_kernel**2 * config.image_size[0] * config.image_size[1]
    modules = {"backbone": model.backbone, **model.trainable_modules(), "postprocess": None}
    rows = []
    for name, module in modules.items():
        params = list(module.parameters()) if module is not None else []
        rows.append(
            ModuleStats(
                name,
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
                counts[name],
            )
        )
    rows.append(
        ModuleStats("total", sum(r.params for r in rows), sum(r.trainable for r in rows), sum(r.macs for r in rows))
    )
    return rows


PROVIDERS = ("reference", "fast-cpu", "folded")


def _macs(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2  # matmul/conv FLOPs are 2 per multiply-accumulate


def provider_macs(config: ModelConfig) -> dict[str, dict[str, int]]:
    """MACs per image and stage of each provider, counted on the ops each one runs (FlopCounterMode, meta device).

    Stages: backbone, heads (backbone features -> seg map + score logit, the feature stage included),
    postprocess (map upsample + blur). Matmuls and convolutions count as they execute, dense resampling too.
    """
    from kernels import reference
    from pipeline.folded import FoldedSSN
    from pipeline.model import Features

    model = build_meta_model(config)
    x = torch.empty(1, 3, *config.image_size, device="meta")
    need_pooled = not config.adapt_cls_features
    out = {}
    with torch.no_grad():
        l2, l3 = model.backbone(x)
        for impl in PROVIDERS[:2]:

            def heads(impl=impl):
                w, b = model.adaptor.weight, model.adaptor.bias
                feats = Features(*reference.feature_stage(l2, l3, w, b, config.align_corners, impl, need_pooled))
                return model.heads(feats.adapted, model.cls_input(feats))

            model.impl = impl
            seg_map, _ = heads()
            out[impl] = {"backbone": _macs(lambda: model.backbone(x)), "heads": _macs(heads)}
            out[impl]["postprocess"] = _macs(lambda seg_map=seg_map: model.postprocess(seg_map))
        folded = FoldedSSN.from_model(model)
        seg_map = folded.seg_path(l2, l3)
        out["folded"] = {
            "backbone": _macs(lambda: folded.backbone(x)),
            "heads": _macs(lambda: folded.heads(l2, l3)),
            "postprocess": _macs(lambda: folded.postprocess(seg_map)),
        }
    for stages in out.values():
        stages["total"] = sum(stages.values())
    return out


# ---------------------------------------------------------------------------------------------------------------
# `ssn info`


def configure_info(parser) -> None:
    from pipeline.config import PRESETS

    parser.add_argument("--preset", default="mvtec", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field, e.g. --set align_corners=false",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_info(args) -> int:
    import dataclasses
    import json

    from pipeline.config import get_preset
    from pipeline.config import override

    preset = get_preset(args.preset)
    config = override(preset.model, args.set)
    rows = model_stats(config)
    if args.json:
        payload = {
            "preset": preset.name,
            "model": dataclasses.asdict(config),
            "train": dataclasses.asdict(preset.train),
            "modules": [dataclasses.asdict(r) | {"gflops": r.gflops} for r in rows],
            "gmacs_per_provider": {p: {k: v / 1e9 for k, v in st.items()} for p, st in provider_macs(config).items()},
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"preset {preset.name}: {preset.note}")
    for key, value in dataclasses.asdict(config).items():
        print(f"  model.{key:<20} {value}")
    for key, value in dataclasses.asdict(preset.train).items():
        print(f"  train.{key:<20} {value}")
    fh, fw = config.feature_size
    variant = "ICPR, adapted" if config.adapt_cls_features else "JIMS, raw pooled"
    print(f"  features              {config.feature_channels} x {fh} x {fw} (cls head variant: {variant})")
    print(f"\n{'module':<12} {'params':>12} {'trainable':>12} {'GFLOPs/img':>11}")
    for r in rows:
        print(f"{r.name:<12} {r.params:>12,} {r.trainable:>12,} {r.gflops:>11.2f}")
    print("GFLOPs = 2 x MACs of convs and linears at image_size, batch 1; postprocess is the 2-D blur.")
    print(f"\n{'provider':<12} {'backbone':>9} {'heads':>9} {'postproc':>9} {'total':>9}   GMACs/img as each runs")
    for provider, st in provider_macs(config).items():
        cells = " ".join(f"{st[k] / 1e9:>9.2f}" for k in ("backbone", "heads", "postprocess", "total"))
        print(f"{provider:<12} {cells}")
    print("heads = backbone features -> seg map + score (feature stage included); dense resampling matrices counted.")
    return 0
