"""The folded inference graph, provider `folded`: SuperSimpleNet's outputs for a fraction of its arithmetic.

    images [B, 3, H, W] -> backbone (a copy of the source's, fed channels_last) -> l2 [B,C2,h2,w2], l3 [B,C3,h3,w3]
      seg path:  per layer l_k @ W_seg,k at native resolution (one GEMM) -> width and height resize + pool to the
                 feature grid (matmuls; the bias rides along) -> LeakyReLU -> 1024 -> 1 dot   -> seg map [B,1,fh,fw]
      cls path:  per layer l_k @ V_k (25 taps x 128 outputs, one GEMM) -> width resize + pool + tap shift + sum
                 over dx, then the same over dy (matmuls) + 5x5 stencil of the seg map + bias map (conv bias and
                 BatchNorm folded) -> ReLU -> max/avg pools (+ the seg map's) -> fc            -> score logit [B]
      postprocess: map_rows @ seg map @ map_cols (upsample + blur) (+ sigmoid), and the per-image map max

Activations are channels-last ([B, h, w, C]) between the GEMMs, so every step is one plain matmul without copies.
`FoldedSSN.from_model(model)` composes the weights in float64 (pipeline/folding.py) and casts them once; they are
buffers, so the module exports to ONNX as is (matmul/conv/cat/permute/amax/mean, no data-dependent control flow).
Inference only: the `reference` SuperSimpleNet stays the truth for training. A source model changed after folding
is detected at every eager forward (SourceWatch: version counters, cheap, outside the traced math), which then
raises `StaleFoldError` until `refresh()` re-folds; `folded.source = None` detaches it from the source.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.folding import SEG_SLOPE
from pipeline.folding import TAPS
from pipeline.folding import fold_heads
from pipeline.folding import resample_operators
from pipeline.model import CLS_HIDDEN
from pipeline.model import Prediction
from pipeline.model import SuperSimpleNet
from pipeline.model import check_images

COMPILED = "_compiled_backbone"  # key in __dict__ of the opt-in torch.compile'd backbone (kept out of state_dict)


class StaleFoldError(RuntimeError):
    """The source model changed after folding; the folded weights would give a silently wrong result."""


def _is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    # [B, C, h, w] -> [B, h, w, C]: a view for the channels_last backbone outputs, so `@ [C, N]` is one GEMM
    return x.permute(0, 2, 3, 1)


class SourceWatch:
    """Whether a module changed since a snapshot, from PyTorch's per-tensor version counters and identities.

    Cheap (no tensor data is read) and weak (keeps nothing alive). Covers in-place updates (optimizer steps,
    `load_state_dict`, `copy_` under no_grad), BatchNorm running statistics, reassigned parameters/buffers/modules,
    `.to()` and a replaced config; not edits through `.data` (PyTorch does not count those).
    """

    def __init__(self, model: nn.Module):
        self.model = weakref.ref(model)
        self.config = model.config
        self.entries = []  # (module ref, name, store, key, object ref or None, version, data_ptr)
        for name, module in model.named_modules():  # parents first: a replaced child is reported as such
            for store in ("_parameters", "_buffers", "_modules"):  # where nn.Module keeps what it holds
                for key, obj in getattr(module, store).items():
                    version, ptr = (obj._version, obj.data_ptr()) if isinstance(obj, torch.Tensor) else (-1, 0)
                    ref = weakref.ref(obj) if obj is not None else None
                    self.entries.append((weakref.ref(module), name, store, key, ref, version, ptr))

    def stale_reason(self) -> str | None:
        """None while unchanged (or gone: then nothing can change it); else what changed."""
        model = self.model()
        if model is None:
            return None
        if model.config != self.config:
            return f"the config changed ({model.config} vs {self.config})"
        for module_ref, name, store, key, ref, version, ptr in self.entries:
            module = module_ref()
            now = getattr(module, store).get(key) if module is not None else None
            if module is None or now is not (ref() if ref is not None else None):
                return f"{name}.{key} was replaced".lstrip(".")
            if version >= 0 and (now._version != version or now.data_ptr() != ptr):
                return f"{name}.{key} changed in place".lstrip(".")
        return None


class FoldedSSN(nn.Module):
    """Inference-only SuperSimpleNet with folded heads; forward(images) -> Prediction, like SuperSimpleNet."""

    def __init__(self, config, backbone: nn.Module, buffers: dict[str, torch.Tensor], map_sigmoid: bool = False):
        super().__init__()
        self.config = config
        self.map_sigmoid = map_sigmoid
        self.channels_last = True  # NHWC input: faster backbone convs on CPU (bench/backbone_cpu.py), free GEMM views
        self.backbone = backbone
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self.source: SourceWatch | None = None  # the model it was folded from, checked at every eager forward
        super().train(False)

    @classmethod
    def from_model(
        cls, model: SuperSimpleNet, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> FoldedSSN:
        """Fold `model` (eval mode) in float64 and cast once to `dtype`/`device` (default: the model's).

        The backbone is copied (and cast), so the folded module is self-contained: `.to()` on it never touches
        `model`, and `model` may be dropped after folding.
        """
        buffers = fold_heads(model)  # checks the model first: a clear UnsupportedModelError
        ref = model.adaptor.weight
        dtype = dtype or ref.dtype
        device = torch.device(device) if device is not None else ref.device
        buffers |= resample_operators(model.config)
        buffers = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in buffers.items()}
        backbone = copy.deepcopy(model.backbone).to(device=device, dtype=dtype)
        folded = cls(model.config, backbone, buffers, map_sigmoid=model.map_sigmoid)
        if ref.device.type != "meta":
            folded.source = SourceWatch(model)
        return folded

    def __deepcopy__(self, memo: dict) -> FoldedSSN:
        # a copy stays tied to the same source (the watch is shared, it holds only weak references); a compiled
        # backbone is not copied (compile the copy again if wanted)
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        state = {k: v if k == "source" else copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != COMPILED}
        clone.__dict__.update(state)
        return clone

    def compile_backbone(self, backend: str = "inductor") -> FoldedSSN:
        """Opt-in for long-running CPU processes: run the backbone through torch.compile (inductor, freezing).

        Measured 1.1-1.4x on the WRN50-2 backbone on CPU (bench/backbone_cpu.py, README), for 10-25 s of
        compilation on the first call and again on the first new batch size. Outputs change by rounding only
        (<= 3e-6 relative). ONNX export and tracing use the plain backbone; refresh() drops the compiled one.
        """
        import torch._inductor.config as inductor_config

        compiled = torch.compile(self.backbone, backend=backend)

        def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # freezing (weights as constants, oneDNN-prepacked) must be on when inductor compiles, i.e. at a call;
            # torch.compile(options={"freezing": True}) does not reach it (measured: no speed-up)
            with inductor_config.patch(freezing=True):
                return compiled(images)

        self.__dict__[COMPILED] = run  # not a submodule: out of state_dict and of the exported graph
        return self

    # ---- freshness ------------------------------------------------------------------------------------------

    def stale_reason(self) -> str | None:
        """None while the folded weights match the source model; else what changed in it."""
        return self.source.stale_reason() if self.source is not None else None

    def refresh(self) -> FoldedSSN:
        """Re-fold from the (changed) source model, in place; returns self."""
        model = self.source.model() if self.source is not None else None
        if model is None:
            raise StaleFoldError("the source model is gone; build a new one with FoldedSSN.from_model(model)")
        fresh = FoldedSSN.from_model(model, dtype=self.seg_w2.dtype, device=self.seg_w2.device)
        self.config, self.backbone, self.source = fresh.config, fresh.backbone, fresh.source
        self.__dict__.pop(COMPILED, None)
        for name, tensor in fresh.named_buffers(recurse=False):
            setattr(self, name, tensor)
        return self

    def train(self, mode: bool = True) -> FoldedSSN:
        if mode:
            raise RuntimeError("FoldedSSN is inference-only; train the SuperSimpleNet (reference) and fold it again")
        return super().train(False)

    def check_ready(self, images: torch.Tensor) -> None:
        check_images(images, self.config.image_size)
        if images.dtype != self.seg_w2.dtype:
            raise TypeError(f"images are {images.dtype} but the folded model is {self.seg_w2.dtype}; cast the images")
        reason = self.stale_reason()
        if reason is not None:
            raise StaleFoldError(
                f"the source model changed after folding: {reason}; call .refresh() or FoldedSSN.from_model(model)"
            )

    # ---- the graph ------------------------------------------------------------------------------------------

    def seg_path(self, l2: torch.Tensor, l3: torch.Tensor) -> torch.Tensor:
        # l2: [B, C2, h2, w2], l3: [B, C3, h3, w3] -> seg map logits [B, 1, fh, fw]
        # channel mix at native resolution (one GEMM per layer), then each layer's width resize + pool
        cols2 = self.seg_cols2 @ (_nhwc(l2) @ self.seg_w2)  # [B, h2, fw, 1024]
        cols3 = self.seg_cols3 @ (_nhwc(l3) @ self.seg_w3)  # [B, h3, fw, 1024]
        bias = self.seg_bias.expand(l2.shape[0], 1, cols2.shape[2], -1)  # [B, 1, fw, 1024]: times seg_rows' ones
        stacked = torch.cat([cols2, cols3, bias], dim=1).flatten(2)  # [B, h2 + h3 + 1, fw * 1024]
        hidden = (self.seg_rows @ stacked).unflatten(2, cols2.shape[2:])  # [B, fh, fw, 1024]: height resize + pool
        hidden = F.leaky_relu(hidden, SEG_SLOPE, inplace=True)  # on a fresh tensor: one big allocation less
        return (hidden @ self.seg_out).permute(0, 3, 1, 2)  # [B, fh, fw, 1] -> [B, 1, fh, fw]

    def _cls_layer(self, x: torch.Tensor, taps: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # x: [B, C, h, w] -> [B, dy, h, fw, 128]: the 25 taps' channel mix at native resolution (one GEMM), then
        # width resize + pool + shift by dx + sum over dx (one matmul over (w, dx))
        b, _, h, w = x.shape
        z = (_nhwc(x) @ taps).reshape(b, h, w * TAPS, TAPS * CLS_HIDDEN)  # [B, h, (w, dx), (dy, o)]
        return (cols @ z).unflatten(3, (TAPS, CLS_HIDDEN)).permute(0, 3, 1, 2, 4)  # view [B, dy, h, fw, 128]

    def cls_path(self, l2: torch.Tensor, l3: torch.Tensor, seg_map: torch.Tensor) -> torch.Tensor:
        # l2, l3 as seg_path, seg_map: [B, 1, fh, fw] -> score logits [B]
        stacked = torch.cat(
            [self._cls_layer(l2, self.cls_w2, self.cls_cols2), self._cls_layer(l3, self.cls_w3, self.cls_cols3)], dim=2
        )  # [B, dy, h2 + h3, fw, 128]
        fh, fw = seg_map.shape[-2:]
        feat = (self.cls_rows @ stacked.flatten(3).flatten(1, 2)).unflatten(2, (fw, CLS_HIDDEN))  # [B, fh, fw, 128]
        stencil = F.conv2d(seg_map, self.cls_map_w, padding=TAPS // 2).permute(0, 2, 3, 1)  # [B, fh, fw, 128]
        x = F.relu(feat + stencil + self.cls_bias)  # conv + BN, folded
        pooled = torch.cat(
            [x.amax(dim=(1, 2)), x.mean(dim=(1, 2)), seg_map.amax(dim=(2, 3)), seg_map.mean(dim=(2, 3))], dim=1
        )  # [B, 258]
        return F.linear(pooled, self.fc_w, self.fc_b).reshape(-1)

    def heads(self, l2: torch.Tensor, l3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # backbone features -> (seg map logits [B, 1, fh, fw], score logits [B])
        seg_map = self.seg_path(l2, l3)
        return seg_map, self.cls_path(l2, l3, seg_map)

    def postprocess(self, seg_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # seg_map: [B, 1, fh, fw] -> (anomaly map [B, 1, H, W]: blurred logits or probabilities, its max [B])
        anomaly_map = self.map_rows @ seg_map @ self.map_cols
        if self.map_sigmoid:
            anomaly_map = anomaly_map.sigmoid()
        return anomaly_map, anomaly_map.amax(dim=(1, 2, 3))

    def seg_and_score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (seg map logits [B, 1, fh, fw], score logits [B]): all but the postprocess."""
        if not _is_tracing():  # Python-side checks only; nothing of them enters an exported graph
            self.check_ready(images)
        return self.heads(*self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # images: [B, 3, H, W] -> l2: [B, C2, h2, w2], l3: [B, C3, h3, w3] (channels_last memory when fed so)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get(COMPILED)
        return (self.backbone if compiled is None or _is_tracing() else compiled)(images)

    def forward(self, images: torch.Tensor) -> Prediction:
        """images [B, 3, H, W] normalized float -> Prediction (same contract as SuperSimpleNet)."""
        seg_map, score_logit = self.seg_and_score(images)
        anomaly_map, _ = self.postprocess(seg_map)
        return Prediction(score_logit, score_logit.sigmoid(), anomaly_map)
