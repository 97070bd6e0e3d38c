#!/usr/bin/env bash
# The one short script for a GPU host (device tool): every GPU-only claim in README has a line here.
# Usage: bash bench/device_check.sh [OUT_DIR]   (PYTHON=... picks the interpreter; the repo root is put on sys.path
# by the benches, so no install is needed). Each check names the modules it imports; where one is missing (or CUDA
# is absent) it prints one skip line with the reason and the script goes on. A failing check never stops the checks
# after it. The end: a summary of what ran, passed, failed and was skipped, also in OUT_DIR/summary.{md,json};
# the exit status is 1 when a check failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results}}"
PY="${PYTHON:-python}"
mkdir -p "$out"
names=() results=() reasons=() seconds=()

record() {  # NAME RESULT REASON SECONDS
    names+=("$1") results+=("$2") reasons+=("$3") seconds+=("$4")
}

# check NAME "MODULE ..." COMMAND...   MODULE `cuda` means: torch sees a CUDA device.
check() {
    local name=$1 needs=$2 missing start rc
    shift 2
    if ! missing=$("$PY" bench/device_needs.py $needs 2>&1); then
        echo "skip: $name ($missing)"
        record "$name" skipped "$missing" 0
        return 0
    fi
    echo "== $name: $*"
    start=$(date +%s)
    "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        record "$name" passed "" $(($(date +%s) - start))
    else
        echo "FAILED: $name (exit status $rc)"
        record "$name" failed "exit status $rc" $(($(date +%s) - start))
    fi
}

check cuda-device "torch cuda" "$PY" -c "import torch; print(torch.cuda.get_device_name())"
# paper protocol: WRN50-2 at 256x256, fp16; batch 1 latency and batch 16 throughput (V100S: 9.3 ms, 268 img/s)
check throughput-mvtec-fp16 "torch torchvision triton cuda" "$PY" bench/throughput.py --preset mvtec --device cuda \
    --dtype fp16 --batch 1 16 64 --warmup 20 --repeats 100 --json "$out/throughput_mvtec_fp16.json"
check throughput-mvtec-fp32 "torch torchvision triton cuda" "$PY" bench/throughput.py --preset mvtec --device cuda \
    --dtype fp32 --batch 1 16 --warmup 10 --repeats 50 --json "$out/throughput_mvtec_fp32.json"
# folded graph vs reference on the GPU: same outputs (max_diff line), speed ratio per stage
check folded-vs-reference-fp16 "torch torchvision triton cuda" "$PY" bench/throughput.py --preset mvtec --device cuda \
    --dtype fp16 --batch 1 8 --providers reference folded --warmup 10 --repeats 50 \
    --json "$out/throughput_mvtec_fp16_folded.json"
# Triton kernels (issue 12): the kernel and engine tests at real shapes (fp32/fp16/bf16 vs float64; CUDA graphs per
# bucket), each op eager vs fused (us, GB/s, % of the H200 roofline), and the whole model with the kernels beside
# folded and torch.compile max-autotune (cuDNN convs, as inductor's own H100 profiling advises, so its compile stays
# in minutes on a cold cache). Not yet run on a GPU; estimated 1-2 + <1 + 2-4 minutes; timeouts stop a runaway.
check kernel-tests-gpu "pytest torch torchvision triton cuda" timeout 240 "$PY" -m pytest -q -m gpu \
    tests/test_kernel_seg_head.py tests/test_kernel_cls_head.py tests/test_kernel_anomaly_map.py tests/test_engine.py
check kernel-bench "torch triton cuda" timeout 180 "$PY" bench/kernels.py --json "$out/kernels.json"
check throughput-kernels-fp16 "torch torchvision triton cuda" env TORCHINDUCTOR_MAX_AUTOTUNE_CONV_BACKENDS=ATEN \
    timeout 300 "$PY" bench/throughput.py --preset mvtec \
    --device cuda --dtype fp16 --batch 1 64 --providers reference folded triton torch-compile --warmup 5 \
    --repeats 30 --json "$out/throughput_mvtec_fp16_kernels.json"
# deployment (the plain GPU host has neither DALI nor TensorRT nor nvidia-pytriton; the NGC containers do:
# README "Deploy on a GPU host" lists the in-container checks)
check dali-mixed-decode "pytest torch torchvision nvidia.dali cuda" \
    "$PY" -m pytest -q -m gpu tests/test_preprocess.py  # DALI "mixed" (nvJPEG) decode == CPU decode
check tensorrt-engine "pytest torch triton torchvision onnx onnxscript onnxruntime tensorrt cuda" \
    "$PY" -m pytest -q tests/test_trt_engine.py  # TensorRT 10/11 engine from the ONNX == PyTorch; metadata
check serve-gpu "torch triton torchvision nvidia.dali pytriton|tritonserver tritonclient.grpc safetensors cuda" \
    "$PY" bench/serve.py --preset mvtec --device gpu --concurrency 1 4 16 64 --max-batch 64 --seconds 10 \
    --json "$out/serve_mvtec_gpu.json"  # supersimplenet_py on KIND_GPU vs in-process
# engine metadata names the GPU CUDA shows as device 0 (CUDA_VISIBLE_DEVICES respected) and reads the TensorRT
# version from libnvinfer itself (pipeline/deploy/gpu_host.py)
check host-description "torch cuda" "$PY" -c "import torch; from pipeline.deploy import gpu_host as g; \
gpus = g.visible_gpus(); n = torch.cuda.device_count(); print(gpus); assert len(gpus) == n, (gpus, n); \
assert all(gpus[i] == (torch.cuda.get_device_name(i), '%d.%d' % torch.cuda.get_device_capability(i)) \
for i in range(n)), gpus"
check tensorrt-library-version "tensorrt" "$PY" -c "import tensorrt; from pipeline.deploy import gpu_host as g; \
v = g.tensorrt_library_version(); print(v, tensorrt.__version__); assert v == tensorrt.__version__"
# the served ensemble in the NGC tritonserver image (+ this package, pip tensorrt of the image's version): engine
# built here, python preprocess step with DALI "mixed" decode, results = PyTorch, a bad frame fails alone
check ensemble-gpu "pytest torch triton torchvision onnx onnxscript safetensors tensorrt nvidia.dali tritonclient.grpc \
    tritonserver cuda" "$PY" -m pytest -q -m gpu tests/test_ensemble.py
# training (bench/train.py): per-stage img/s for tiny and mvtec, bf16 autocast, uncached vs feature cache
check train-cuda-bf16 "torch torchvision safetensors tqdm scipy sklearn cuda" "$PY" bench/train.py \
    --presets tiny mvtec --device cuda --batch 32 --precision bf16 --json "$out/train_cuda_bf16.json"
# training on CUDA: bf16 autocast trains; the feature cache is exact on the GPU
check train-gpu-tests "pytest torch torchvision safetensors tqdm scipy sklearn cuda" \
    "$PY" -m pytest -q -m gpu tests/test_train_gpu.py

# summary: a table on stdout, OUT_DIR/summary.md and OUT_DIR/summary.json
json_escape() { local v=${1//\\/\\\\}; v=${v//\"/\\\"}; printf '%s' "$v"; }
{
    echo "| check | result | seconds | reason |"
    echo "|---|---|---|---|"
    for i in "${!names[@]}"; do echo "| ${names[$i]} | ${results[$i]} | ${seconds[$i]} | ${reasons[$i]} |"; done
} >"$out/summary.md"
{
    echo "["
    for i in "${!names[@]}"; do
        sep=","; [ "$i" -eq $((${#names[@]} - 1)) ] && sep=""
        printf '  {"check": "%s", "result": "%s", "seconds": %s, "reason": "%s"}%s\n' "${names[$i]}" \
            "${results[$i]}" "${seconds[$i]}" "$(json_escape "${reasons[$i]}")" "$sep"
    done
    echo "]"
} >"$out/summary.json"
count() { local n=0 r; for r in "${results[@]}"; do [ "$r" = "$1" ] && n=$((n + 1)); done; echo $n; }
echo
cat "$out/summary.md"
echo "device_check: ${#names[@]} checks: $(count passed) passed, $(count failed) failed, $(count skipped) skipped"
[ "$(count failed)" -eq 0 ]
