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
# training (bench/train.py): per-stage img/s for tiny and mvtec, bf16 autocast, uncached vs feature cache
python bench/train.py --presets tiny mvtec --device cuda --batch 32 --precision bf16 --json "$out/train_cuda_bf16.json"
# training on CUDA: bf16 autocast trains; the feature cache is exact on the GPU (tests/test_train_gpu.py)
python -m pytest -q -m gpu tests/test_train_gpu.py
