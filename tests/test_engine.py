"""pipeline/engine.py: the GPU engine (folded graph + Triton kernels + CUDA graphs) equals the reference model.

On CPU: the engine's graph with the ops' plain forms (float64, to 1e-9) and with the Triton kernels themselves under
the interpreter (fp32); the fallback without CUDA; staleness and bad input. With -m gpu on a CUDA host: real
sizes in fp16 with CUDA graphs, bucket padding and chunking, and the served module choice."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import make_model
from kernel_helpers import needs_cuda
from kernel_helpers import needs_kernels
from kernel_helpers import rel_err

from pipeline.config import ModelConfig
from pipeline.config import get_preset
from pipeline.engine import LAUNCHERS
from pipeline.engine import GpuEngine
from pipeline.folded import FoldedSSN
from pipeline.folded import StaleFoldError
from pipeline.inference import inference_module

SMALL = ModelConfig(backbone="resnet18", image_size=(32, 48))  # features 8 x 12: two kernel tiles per image


def images(batch: int, size, dtype=torch.float32, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("adapt_cls,align_corners", [(True, True), (False, False)], ids=["icpr-ac", "jims-no-ac"])
def test_engine_graph_equals_reference_float64(adapt_cls, align_corners):
    """The engine's graph (one GEMM per layer, seg/cls slices, unshifted operators, the three ops, the fc) with
    the ops' plain forms: <= 1e-9 relative to the reference model, batch 2, odd grids (layer2 5x7, layer3 3x4)."""
    config = ModelConfig(backbone="resnet18", image_size=(40, 56), align_corners=align_corners,
                         adapt_cls_features=adapt_cls)  # fmt: skip
    model = make_model(config, seed=1).double()
    engine = GpuEngine(FoldedSSN.from_model(model))
    x = images(2, config.image_size, torch.float64)
    with torch.no_grad():
        ref, got = model(x), engine(x)
    assert got.anomaly_map.shape == (2, 1, 40, 56) and got.score_logit.shape == (2,)
    assert rel_err(got.score_logit, ref.score_logit) <= 1e-9 and rel_err(got.anomaly_map, ref.anomaly_map) <= 1e-9
    assert torch.equal(got.score, got.score_logit.sigmoid())


@needs_kernels
def test_engine_with_the_triton_kernels_equals_reference():
    """The kernels themselves (interpreter on CPU, compiled on CUDA), fp32, ICPR head, map sigmoid: score logits
    and map <= 1e-5 relative to the float64 reference model (measured ~1e-6)."""
    config = ModelConfig(backbone="resnet18", image_size=SMALL.image_size, adapt_cls_features=True)
    model = make_model(config, seed=2, map_sigmoid=True).double()
    x = images(2, config.image_size, torch.float64)
    engine = GpuEngine(FoldedSSN.from_model(copy.deepcopy(model).float()), cuda_graphs=False)
    engine.ops = LAUNCHERS
    with torch.no_grad():
        ref, got = model(x), engine(x.float())
    assert rel_err(got.score_logit, ref.score_logit) <= 1e-5 and rel_err(got.anomaly_map, ref.anomaly_map) <= 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for hosts without CUDA")
def test_without_cuda_the_folded_cpu_graph_serves_with_a_warning():
    model = make_model(SMALL, map_sigmoid=True)
    with pytest.warns(UserWarning, match="CUDA is not available; falling back to the folded CPU graph"):
        module = GpuEngine.from_model(model)
    assert isinstance(module, FoldedSSN) and module.seg_w2.dtype == torch.float32 and module.map_sigmoid
    with pytest.warns(UserWarning, match="falling back"):
        assert isinstance(inference_module(model, "triton"), FoldedSSN)


def test_changed_source_is_refused_until_refresh():
    model = make_model(SMALL)
    engine = GpuEngine(FoldedSSN.from_model(model))
    x = images(1, SMALL.image_size)
    with torch.no_grad():
        model.cls_head.fc.bias.add_(1.0)
        with pytest.raises(StaleFoldError, match=r"cls_head.fc.bias changed in place; call engine.refresh\(\)"):
            engine(x)
        torch.testing.assert_close(engine.refresh()(x).score_logit, model(x).score_logit, rtol=1e-5, atol=1e-5)


def test_bad_input_and_inference_only():
    engine = GpuEngine(FoldedSSN.from_model(make_model(SMALL)))
    with pytest.raises(ValueError, match=r"image size \(32, 32\) does not match"):
        engine(images(1, (32, 32)))
    with pytest.raises(TypeError, match="normalized float tensor"):
        engine(torch.zeros(1, 3, 32, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="buckets=.* batch sizes >= 1"):
        GpuEngine(engine.folded, buckets=(0, 4))
    with pytest.raises(RuntimeError, match="inference-only"):
        engine.train()


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_graphs_at_mvtec_size(dtype):
    """WRN50-2 at 256x256: graphs per bucket; batch 3 pads to 4, 70 runs as 64 + 6; = eager and = the fp32
    reference model within the dtype's rounding (fp16 <= 1.5e-2, bf16 <= 6e-2 relative, as the folded graph)."""
    preset = get_preset("mvtec").model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(preset, map_sigmoid=True).cuda()
    engine = GpuEngine.from_model(model, dtype=dtype).warmup((1, 4))
    assert set(engine._graphs) == {1, 4}
    tol = 1.5e-2 if dtype == torch.float16 else 6e-2
    x = images(70, preset.image_size).cuda()
    with torch.inference_mode():
        ref = model(x)
        for batch in (1, 3, 70):
            got = engine(x[:batch])
            eager = engine.eager(x[:batch].to(dtype))
            assert got.anomaly_map.shape == (batch, 1, 256, 256) and got.anomaly_map.dtype == dtype
            torch.testing.assert_close(got.anomaly_map, eager.anomaly_map, rtol=0, atol=2e-3)
            assert rel_err(got.score_logit, ref.score_logit[:batch]) <= tol
            assert rel_err(got.anomaly_map, ref.anomaly_map[:batch]) <= tol


@needs_cuda
@pytest.mark.gpu
def test_served_module_on_cuda_is_the_engine(tmp_path):
    """load_inference_module(impl='folded', device='cuda') serves the GPU engine, warmed up (a CUDA graph per
    bucket); the ensemble's postprocess step on GPU tensors runs the fused map kernel and equals its CPU form."""
    pytest.importorskip("safetensors", reason="checkpoints need safetensors (a bare GPU host may lack it)")
    from pipeline.checkpoint import save_checkpoint
    from pipeline.deploy.serving import anomaly_map_from_logits
    from pipeline.inference import load_inference_module

    model = make_model(SMALL)
    save_checkpoint(model, tmp_path / "m.safetensors", "random")
    module, _ = load_inference_module(tmp_path / "m.safetensors", "folded", "cuda")
    assert isinstance(module, GpuEngine) and module.map_sigmoid
    assert set(module._graphs) == set(module.buckets)  # captured at load, before traffic
    seg = torch.randn(4, 1, 8, 12)
    torch.testing.assert_close(anomaly_map_from_logits(seg.cuda(), SMALL).cpu(), anomaly_map_from_logits(seg, SMALL))
