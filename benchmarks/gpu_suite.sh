#!/usr/bin/env bash
# The GPU figures: offline batch prediction and the service load test with ONNX Runtime's CUDA provider.
#
# Needs an NVIDIA GPU, onnxruntime-gpu (`pip install 'sitenet-dim[gpu]'`, never beside onnxruntime) and the
# serving extra. Every model is opened with providers=cuda, so a run where CUDA does not really execute
# (missing CUDA/cuDNN libraries, CPU build of the runtime) fails instead of timing the CPU.
#
#   bash benchmarks/gpu_suite.sh offline [DATA_CSV] [OUT_DIR]   # predict_batch.py, one worker per core
#   bash benchmarks/gpu_suite.sh service [OUT_DIR]              # service_load.py with the default settings
#   bash benchmarks/gpu_suite.sh soak [OUT_DIR]                 # memory over five 45-s phases at 16 clients
#   bash benchmarks/gpu_suite.sh workers [OUT_DIR]              # 16 clients against 4, 8, 12 and 16 HTTP workers
#   bash benchmarks/gpu_suite.sh placement [OUT_DIR]            # adaptive against inline model placement
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
cores=$(nproc)
stage=${1:?usage: gpu_suite.sh offline|service|soak|workers|placement ...}

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
    # The service as shipped (default placement and workers), the issue's phases: 60 s at 1, 4 and 16 clients,
    # then latency at a fixed offered rate.
    SITENET_PROVIDERS=cuda "$python" benchmarks/service_load.py --duration 60 --clients 1 4 16 --rate 400 \
        --output "$out/service_gpu" --note "GPU, $cores CPU cores, default settings"
    ;;
soak)
    out=${2:-benchmarks/results}
    # Memory under sustained load: five 45-s phases at 16 clients, server RSS after each.
    SITENET_PROVIDERS=cuda "$python" benchmarks/service_load.py --duration 45 --clients 16 --rate 0 --soak 4 \
        --output "$out/service_gpu_soak" --note "GPU, $cores CPU cores, default settings, soak"
    ;;
workers)
    out=${2:-benchmarks/results}
    # HTTP workers (inline): each holds its own CUDA context, and contexts of different processes take turns
    # on the GPU, so more workers than the parsing needs cost throughput.
    for w in 4 8 12 16; do
        SITENET_PROVIDERS=cuda SITENET_WORKERS=$w "$python" benchmarks/service_load.py --duration 30 --clients 16 \
            --rate 0 --output "$out/service_gpu_workers_$w" --note "GPU, $cores CPU cores, $w HTTP workers"
    done
    ;;
placement)
    out=${2:-benchmarks/results}
    # Where the models run, same HTTP workers: adaptive (one model worker batching crystals across requests)
    # against inline (every HTTP worker runs its own CUDA sessions on its own requests).
    for mode in adaptive inline; do
        SITENET_PROVIDERS=cuda SITENET_BATCHING=$mode SITENET_WORKERS=$((cores / 2)) \
            "$python" benchmarks/service_load.py --duration 30 --clients 1 4 16 64 --rate 0 \
            --output "$out/service_gpu_$mode" --note "GPU, $cores CPU cores, $mode placement"
    done
    ;;
*)
    echo "unknown stage $stage (offline | service | soak | workers | placement)" >&2
    exit 2
    ;;
esac
