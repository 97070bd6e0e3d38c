#!/usr/bin/env bash
# The one short script for a GPU host (device tool): every GPU-only claim in README has a line here.
# Usage: bash bench/device_check.sh [OUT_DIR]   (about 2 minutes on an H200; needs torch + torchvision with CUDA;
# the repo root is put on sys.path by the bench, so no install is needed)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results}}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
# paper protocol: WRN50-2 at 256x256, fp16; batch 1 latency and batch 16 throughput (V100S: 9.3 ms, 268 img/s)
python bench/throughput.py --preset mvtec --device cuda --dtype fp16 --batch 1 16 64 --warmup 20 --repeats 100 \
    --json "$out/throughput_mvtec_fp16.json"
python bench/throughput.py --preset mvtec --device cuda --dtype fp32 --batch 1 16 --warmup 10 --repeats 50 \
    --json "$out/throughput_mvtec_fp32.json"
# folded graph vs reference on the GPU (issue: folded graph): same outputs (max_diff line), speed ratio per stage
python bench/throughput.py --preset mvtec --device cuda --dtype fp16 --batch 1 8 --providers reference folded \
    --warmup 10 --repeats 50 --json "$out/throughput_mvtec_fp16_folded.json"
# deployment: each check runs only where its package is (the plain GPU host has neither DALI nor TensorRT nor
# nvidia-pytriton; the NGC containers do: README "Deploy on a GPU host" lists the in-container checks)
if python -c "import pytest, nvidia.dali" 2>/dev/null; then
    python -m pytest -q -m gpu tests/test_preprocess.py  # DALI "mixed" (nvJPEG) decode == CPU decode
else
    echo "skip: DALI mixed-decode check (nvidia-dali or pytest not installed)"
fi
if python -c "import pytest, tensorrt" 2>/dev/null; then
    python -m pytest -q tests/test_trt_engine.py  # TensorRT 10/11 engine from the ONNX == PyTorch; metadata
else
    echo "skip: TensorRT engine build check (tensorrt not installed)"
fi
if python -c "import nvidia.dali, pytriton, tritonclient.grpc" 2>/dev/null; then
    python bench/serve.py --preset mvtec --device gpu --concurrency 1 4 16 64 --max-batch 64 --seconds 10 \
        --json "$out/serve_mvtec_gpu.json"  # supersimplenet_py on KIND_GPU vs in-process
else
    echo "skip: served GPU benchmark (nvidia-dali / nvidia-pytriton not installed)"
fi
# training (bench/train.py): per-stage img/s for tiny and mvtec, bf16 autocast, uncached vs feature cache
python bench/train.py --presets tiny mvtec --device cuda --batch 32 --precision bf16 --json "$out/train_cuda_bf16.json"
# training on CUDA: bf16 autocast trains; the feature cache is exact on the GPU (tests/test_train_gpu.py)
python -m pytest -q -m gpu tests/test_train_gpu.py
