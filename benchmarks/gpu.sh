#!/usr/bin/env bash
# One short GPU check (a few minutes): parity + bf16 agreement on CUDA, then the benchmark of the
# paper and base presets. Run from the repository root on a CUDA machine that already has torch,
# numpy, safetensors, sentencepiece and pytest (no install, no network):  bash benchmarks/gpu.sh
# Results go to $OUT (or ./gpu-results): nvidia-smi.txt, tests.txt, bench.jsonl.
# Training / inference throughput (torch.compile: several more minutes) is a separate script:
#   python3 benchmarks/gpu_throughput.py --out "${OUT:-gpu-results}/throughput.jsonl"
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 RS2SAM2_TEST_DEVICE=cuda
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$out/tests.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_parity.py tests/test_precision.py -s 2>&1 | tee -a "$out/tests.txt"

bench() { python3 -m rs2sam2 benchmark --device cuda --json "$@" | tail -n 1 | tee -a "$out/bench.jsonl"; }
bench --preset paper --precision fp32 --runs 10 --warmup 3
bench --preset paper --precision bf16 --runs 10 --warmup 3
bench --preset paper --precision bf16 --texts 8 --runs 5 --warmup 2
bench --preset base --precision bf16 --runs 10 --warmup 3
bench --preset paper --precision bf16 --runs 10 --warmup 3 --compile
