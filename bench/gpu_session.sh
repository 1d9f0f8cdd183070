#!/usr/bin/env bash
# Issue 3's GPU checks, one step per device command (each sized for the device tool's 10-minute
# limit; the logs land in $OUT): the CUDA tests, the engine benchmark at full size in fp32,
# tf32 and bf16, precision, and peak memory against N. Nothing here has run yet: no session so
# far was lent a GPU.
#
# The device image holds torch, numpy, pyyaml, prometheus-client, safetensors, scikit-learn,
# matplotlib, pytest and hypothesis, but not pydantic or watchdog. Fetch those here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions watchdog
#
# (checked 2026-11-24: pydantic 2.14.4 with the pydantic-core 2.50.5 it pins, watchdog 7.1.0)
#
# then run each step on the device with `.whl` carried:
#
#   bash bench/gpu_session.sh tests       # tests/stiffness/test_gpu.py (CUDA paths, fp32/tf32/bf16)
#   bash bench/gpu_session.sh engine      # bench/engine.py full sizes, fp32 (the targets)
#   bash bench/gpu_session.sh precisions  # bench/engine.py --precision tf32 and bf16
#   bash bench/gpu_session.sh accuracy    # bench/engine_precision.py (docs/precision.md TODOs)
#   bash bench/gpu_session.sh memory      # bench/engine_memory.py --full (class mode flat in N)
#
# and copy the figures into BENCHMARKS.md and docs/precision.md with the date and machine.
set -uo pipefail
step=${1:?usage: bash bench/gpu_session.sh tests|engine|precisions|accuracy|memory}
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
case "$step" in
    tests) python3 -m pytest tests/stiffness/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/tests.txt" ;;
    engine) python3 bench/engine.py --device cuda --repeats 5 2>&1 | tee "$out/engine-fp32.txt" ;;
    precisions)
        for precision in tf32 bf16; do
            python3 bench/engine.py --device cuda --precision "$precision" --repeats 5 \
                --cases resnet18-c10 encoder 2>&1 | tee "$out/engine-$precision.txt"
        done
        ;;
    accuracy) python3 bench/engine_precision.py --device cuda 2>&1 | tee "$out/precision.txt" ;;
    memory)
        python3 bench/engine_memory.py --device cuda --full \
            --only "vmap class" "hooks class" 2>&1 | tee "$out/memory.txt"
        ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
esac
