#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (torch there, no Ray): the CUDA path of `sweep train`,
# the CUDA tests, and the seed-vs-ours throughput benchmark. Prints every number; writes logs to $OUT.
# Data: synthetic CIFAR-format arrays at CIFAR-10's full size (50,000 / 10,000); the real archive
# (173 MB) is larger than what travels to that machine, and speed does not depend on pixel values.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # pydantic is not on that image: carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "import ray" 2>/dev/null && echo "ray present" || echo "no ray here (as expected): sweep train must not need it"
FULL=(--set data.dataset=synthetic --set data.synthetic_train=50000 --set data.synthetic_test=10000)
say() { echo; echo "== $*"; }

say "sweep train, batchnorm, seed hyperparameters, CUDA graph step (default), 3 epochs"
python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=3 --checkpoint /tmp/ck 2>&1 | tee "$OUT/train_graph.log"
say "evaluate the checkpoint it saved"
python3 -m job train --evaluate /tmp/ck
say "same, eager step (no CUDA graph)"
python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=3 --set optim.cuda_graph=false 2>&1 | tee "$OUT/train_eager.log"
say "same, CUDA graph + bf16 autocast"
python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=3 --set optim.precision=bf16 2>&1 | tee "$OUT/train_bf16.log"

say "same, CUDA graph + optim.compile (Inductor, max-autotune)"
python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=3 --set optim.compile=true 2>&1 | tee "$OUT/train_compile.log"

say "CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5

say "benchmark: seed pipeline vs ours, one epoch + test pass, batch 32"
python3 benchmarks/epoch_throughput.py --device cuda --synthetic --repeats 2 2>&1 | tee "$OUT/bench_cuda.log"
python3 benchmarks/epoch_throughput.py --device cuda --synthetic --repeats 2 --compile 2>&1 | tee "$OUT/bench_cuda_compile.log"

say "where the CUDA step's time goes: variants side by side"
python3 benchmarks/cuda_step_variants.py --repeats 3 --compile-mode max-autotune-no-cudagraphs 2>&1 | tee "$OUT/variants.log"

say "the seed experiment's compute: 3 variants x 50 epochs, one after another (no Ray here)"
start=$(date +%s)
for v in basic dropout batchnorm; do
  python3 -m job train specs/cifar10.yaml --variant "$v" "${FULL[@]}" | tail -1
done
echo "wall: $(( $(date +%s) - start )) s for 3 x 50 epochs (including 3 process starts and data preparation)"
