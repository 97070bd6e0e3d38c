"""ONNX export of the inference module, checked against PyTorch with onnxruntime (`ssn export`).

Two graphs, both with a dynamic batch axis (1..max_batch) and fp32 input `images` [B, 3, H, W] (normalized):
- `full`:  -> score_logit [B], score [B], anomaly_map [B, 1, H, W] (probabilities): the whole Prediction;
- `split`: -> score_logit [B, 1], seg_logits [B, 1, fh, fw]: everything but the anomaly-map op, which the
  ensemble's `postprocess` step runs on the GPU (TensorRT engine input; smaller tensors between steps).
`--dtype fp16` converts the weights and compute to fp16 and keeps fp32 inputs and outputs (casts at the graph
boundary, like ModelOpt AutoCast's keep_io_types): the serving configs stay the same for both dtypes, and under
TensorRT 11 (strong typing only) the fp16 layers come from this graph.

Parity tolerances, |onnx - torch fp32| <= atol + rtol * |torch|: fp32 atol = rtol = 1e-4; fp16 atol = rtol = 1e-2.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

GRAPHS = ("full", "split")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}  # atol and rtol
INPUT = "images"
OUTPUTS = {"full": ("score_logit", "score", "anomaly_map"), "split": ("score_logit", "seg_logits")}
OPSET = 18


def split_forward(module: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg logits [B, 1, fh, fw], score logit [B]): the model up to, not including, the anomaly-map op."""
    if hasattr(module, "seg_and_score"):
        return module.seg_and_score(images)
    if all(hasattr(module, name) for name in ("features", "heads", "cls_input")):
        feats = module.features(images, need_pooled=not module.config.adapt_cls_features)
        return module.heads(feats.adapted, module.cls_input(feats))
    raise ValueError(f"{type(module).__name__} has no split form (features/heads); export it with graph='full'")


class ExportGraph(nn.Module):
    """What goes into the ONNX file: fp32 images in, fp32 tensors out, `dtype` inside."""

    def __init__(self, module: nn.Module, graph: str = "full", dtype: str = "fp32"):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph={graph!r} is unknown; accepted: {', '.join(GRAPHS)}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is unknown; accepted: {', '.join(DTYPES)}")
        if not getattr(module, "map_sigmoid", False) and graph == "full":
            raise ValueError("export the module with map_sigmoid=True: the served anomaly map is a probability")
        self.module = module
        self.graph = graph
        self.dtype = DTYPES[dtype]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # images: [B, 3, H, W] float32
        x = images.to(self.dtype)
        if self.graph == "full":
            pred = self.module(x)
            return pred.score_logit.float(), pred.score.float(), pred.anomaly_map.float()
        seg_logits, score_logit = split_forward(self.module, x)
        return score_logit[:, None].float(), seg_logits.float()  # [B, 1], [B, 1, fh, fw]


def export_onnx(
    module: nn.Module,
    path: str | Path,
    graph: str = "full",
    dtype: str = "fp32",
    max_batch: int = 64,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `module` (the inference contract, map_sigmoid=True) as ONNX; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = copy.deepcopy(module).to(device="cpu", dtype=DTYPES[dtype]).eval()
    wrapper = ExportGraph(inner, graph, dtype).eval()
    example = torch.randn(2, 3, *module.config.image_size)
    with torch.inference_mode():
        wrapper(example)  # fills the cached resampling matrices, so they are traced as constants
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # exporter progress lines
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT],
            output_names=list(OUTPUTS[graph]),
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    _drop_source_locations(model)
    props = {"graph": graph, "dtype": dtype, "max_batch": str(max_batch), "config": module.config.to_json()}
    onnx.helper.set_model_props(model, props | (metadata or {}))
    onnx.save_model(model, str(path))
    return path


SOURCE_LOCATION_KEYS = ("pkg.torch.onnx.stack_trace",)  # torch.onnx (dynamo) node metadata: source files + lines


def _drop_source_locations(model) -> None:
    """Remove the exporter's per-node stack traces: they hold absolute paths of the machine that exported."""

    def clean_nodes(nodes) -> None:
        for node in nodes:
            keep = [p for p in node.metadata_props if p.key not in SOURCE_LOCATION_KEYS]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            for attribute in node.attribute:  # control-flow subgraphs
                for graph in [attribute.g, *attribute.graphs]:
                    clean_nodes(graph.node)

    clean_nodes(model.graph.node)
    for function in model.functions:
        clean_nodes(function.node)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def onnx_parity(path: str | Path, module: nn.Module, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Max |onnxruntime - PyTorch fp32| per output on random normalized images; raises when over tolerance.

    The expectation is the module itself, not the export wrapper: its Prediction for `full`; for `split`, its own
    split form (score logit, seg logits) and, from the ONNX seg logits, the anomaly-map op against its Prediction's
    map (reported as `anomaly_map_from_seg_logits`). So a bug in `ExportGraph` fails the check."""
    import onnxruntime as ort

    from kernels import reference

    meta = onnx_metadata(path)
    graph, dtype = meta["graph"], meta["dtype"]
    config = module.config
    x = torch.randn(batch, 3, *config.image_size, generator=torch.Generator().manual_seed(seed))
    module.eval()
    with torch.inference_mode():
        pred = module(x)
        if graph == "full":
            expected = {"score_logit": pred.score_logit, "score": pred.score, "anomaly_map": pred.anomaly_map}
        else:
            seg_logits, score_logit = split_forward(module, x)
            expected = {"score_logit": score_logit[:, None], "seg_logits": seg_logits}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS[graph], session.run(list(OUTPUTS[graph]), {INPUT: x.numpy()})))
    if graph == "split":
        seg = torch.from_numpy(got["seg_logits"]).float()
        with torch.inference_mode():
            got["anomaly_map_from_seg_logits"] = reference.anomaly_map(
                seg, config.image_size, config.sigma, sigmoid=True, impl="reference"
            ).numpy()
        expected["anomaly_map_from_seg_logits"] = pred.anomaly_map
    tol = TOLERANCES[dtype]
    diffs = {}
    for name, want in expected.items():
        a, b = got[name], want.float().numpy()
        if a.shape != b.shape:
            raise AssertionError(f"ONNX output {name!r} has shape {a.shape}, PyTorch {b.shape}")
        diffs[name] = float(np.abs(a - b).max())
        excess = np.abs(a - b) - (tol + tol * np.abs(b))
        if excess.max() > 0:
            raise AssertionError(f"ONNX output {name!r} differs from PyTorch by {diffs[name]:.3g} ({dtype} tol {tol})")
    return diffs


# ---------------------------------------------------------------------------------------------------------------
# `ssn export`


def configure_export(parser) -> None:
    from pipeline.inference import DEFAULT_IMPL
    from pipeline.inference import INFERENCE_IMPLS

    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by this project")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--graph", default="full", choices=GRAPHS, help="full Prediction, or split (no map op)")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="compute dtype (I/O stays fp32)")
    parser.add_argument("--impl", default=DEFAULT_IMPL, choices=INFERENCE_IMPLS, help="inference module to export")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch the dynamic axis allows")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")


def run_export(args) -> int:
    from pipeline.inference import load_inference_module

    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    from pipeline.checkpoint import file_sha256
    from pipeline.deploy.onnx_runtime import CHECKPOINT_HASH

    module, _ = load_inference_module(args.checkpoint, args.impl)
    metadata = {"impl": args.impl, CHECKPOINT_HASH: file_sha256(args.checkpoint)}  # ties the file to its source
    path = export_onnx(module, args.out, args.graph, args.dtype, args.max_batch, metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, graph {args.graph}, {args.dtype}, impl {args.impl})")
    if not args.no_check:
        diffs = onnx_parity(path, module)
        print(f"onnxruntime parity ({args.dtype} tol {TOLERANCES[args.dtype]}): max abs diff {json.dumps(diffs)}")
    return 0
