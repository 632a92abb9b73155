#!/usr/bin/env bash
# The GPU figures: offline batch prediction and the service load test with ONNX Runtime's CUDA provider.
#
# Needs an NVIDIA GPU, onnxruntime-gpu (`pip install 'sitenet-dim[gpu]'`, never beside onnxruntime) and the
# serving extra. Every model is opened with providers=cuda, so a run where CUDA does not really execute
# (missing CUDA/cuDNN libraries, CPU build of the runtime) fails instead of timing the CPU.
#
#   bash benchmarks/gpu_suite.sh offline [DATA_CSV] [OUT_DIR]   # predict_batch.py, one worker per core
#   bash benchmarks/gpu_suite.sh service [OUT_DIR]              # service_load.py, adaptive and inline placement
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
cores=$(nproc)
stage=${1:?usage: gpu_suite.sh offline|service ...}

case "$stage" in
offline)
    data=${2:-${SITENET_DATA:-../shared/data/mp2018}/mp2018.csv.gz}
    out=${3:-benchmarks/results}
    # Large batches: on a GPU the cost of a batch hardly grows with its size, unlike on CPU.
    "$python" benchmarks/predict_batch.py --providers cuda --workers "$cores" --data "$data" --limit 8000 \
        --batch-size 256 --max-pairs 1000000 --runs 3 --output "$out/predict_batch_gpu" --note "GPU, $cores CPU cores"
    ;;
service)
    out=${2:-benchmarks/results}
    # adaptive: featurise in HTTP workers, one model worker batches crystals across requests on the GPU.
    SITENET_PROVIDERS=cuda SITENET_BATCHING=adaptive SITENET_WORKERS=$((cores / 2)) \
        "$python" benchmarks/service_load.py --duration 30 --clients 1 4 16 64 --rate 0 \
        --output "$out/service_gpu_adaptive" --note "GPU, $cores CPU cores, adaptive placement"
    # inline: every HTTP worker runs its own CUDA sessions on its own requests.
    SITENET_PROVIDERS=cuda SITENET_BATCHING=inline SITENET_WORKERS=$((cores / 2)) \
        "$python" benchmarks/service_load.py --duration 30 --clients 1 4 16 64 --rate 0 \
        --output "$out/service_gpu_inline" --note "GPU, $cores CPU cores, inline placement"
    ;;
*)
    echo "unknown stage $stage (offline | service)" >&2
    exit 2
    ;;
esac
