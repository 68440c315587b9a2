#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (torch, pandas and pyarrow there; no network; Ray, pydantic
# and boto3 come as the wheels in .whl/ that `make gpu-wheels` makes here and the run carries). In order of
# value: GPU packing (K trials per GPU, with and without the CUDA-graph step), the seed experiment as a real
# Ray sweep on one GPU, then short CUDA numbers of `sweep train`, the CUDA tests, the seed-vs-ours benchmark,
# the seed's 3 x 50 epochs without Ray, and the compiled step. Every step is bounded by `timeout` and the
# script goes on when one fails; all steps together stay within BUDGET_S (default 450 s), later ones are
# skipped when it is spent. Console: $OUT/gpu_check.log; each step's log and the sweep's report: $OUT/logs.tgz.
# Data: synthetic CIFAR-format arrays at CIFAR-10's full size (50,000 / 10,000); the real archive
# (173 MB) is larger than what travels to that machine, and speed does not depend on pixel values.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu_out}
LOGS=/tmp/gpu_logs
SITE=${SITE:-/tmp/site}  # where the carried wheels are installed
BUDGET_S=${BUDGET_S:-450}
FULL=(--set data.dataset=synthetic --set data.synthetic_train=50000 --set data.synthetic_test=10000)
mkdir -p "$OUT" "$LOGS"

say() { echo; echo "== $*"; }

# step NAME LIMIT_S COMMAND...: COMMAND under `timeout`, capped by what is left of BUDGET_S; log in $LOGS/NAME.log
step() {
  local name=$1 limit=$2 left=$((BUDGET_S - SECONDS)) start=$SECONDS rc
  shift 2
  if ((left < 15)); then
    echo "-- $name: skipped, the ${BUDGET_S} s budget is spent"
    return
  fi
  ((limit > left)) && limit=$left
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  echo "-- $name: rc $rc, $((SECONDS - start)) s (limit ${limit} s)$([ "$rc" = 124 ] && echo ': TIMED OUT')"
}

setup() {
  python3 --version
  local tag
  tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "no .whl/ here: run 'make gpu-wheels' and carry .whl; steps that need pydantic or Ray will fail"
  else
    local wheels=(.whl/*.whl)
    if [ "$tag" != cp312 ]; then  # the compiled wheels (ray, pydantic-core, rpds-py) are cp312 only
      echo "python3 is $tag, the wheels are for cp312: installing the pure-Python ones only; the job's steps will fail"
      wheels=(.whl/*-none-any.whl)
    fi
    timeout 180 python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" ||
      echo "wheel install failed (rc $?)"
  fi
  # The job's own metadata, which the run's manifest records (importlib.metadata.version("sweep-job")).
  local version
  version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
  mkdir -p "$SITE/sweep_job-$version.dist-info"
  printf 'Metadata-Version: 2.1\nName: sweep-job\nVersion: %s\n' "$version" >"$SITE/sweep_job-$version.dist-info/METADATA"
  export PYTHONPATH="$SITE:$PWD"
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cpus $(nproc), $(free -g | awk '/^Mem:/ {print $2}') GiB memory"
  timeout 60 python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  timeout 60 python3 -c "import ray, pydantic, boto3, job.cli, job.sweep, job.outcome; print('ray', ray.__version__, 'pydantic', pydantic.__version__, 'boto3', boto3.__version__, ': job.sweep imports')"
  local problems
  problems=$(timeout 60 python3 -m pip check 2>&1)
  grep -iE "^(ray|pydantic|boto|jsonschema|tensorboardx|referencing|s3transfer)" <<<"$problems" || echo "pip check: nothing about the carried packages"
}

main() {
  say "setup"
  setup

  say "GPU packing: K = 1, 2, 4, 8 trials on one GPU as separate processes (benchmarks/gpu_packing.py)"
  step packing_graph 120 python3 benchmarks/gpu_packing.py --graph on --epochs 3
  step packing_eager 150 python3 benchmarks/gpu_packing.py --graph off --epochs 2

  say "the seed experiment as a sweep: 3 variants x 50 epochs on one GPU with Ray (target: 30 s or less, Ray start included)"
  timeout 60 python3 -c "from job.spec import load_spec; r = load_spec('specs/cifar10.yaml').resources; print(f'resources per trial: {r.cpus:g} CPU, {r.gpus:g} GPU: {int(1 / r.gpus) if r.gpus else 0} trials fit on one GPU')"
  step sweep 200 bash -c 'rm -rf /tmp/seedsweep; start=$(date +%s%N); python3 -m job run specs/cifar10.yaml --set storage.uri=/tmp/seedsweep "$@"; rc=$?
    echo "sweep wall: $((($(date +%s%N) - start) / 1000000)) ms for 3 variants x 50 epochs, Ray start and report included (rc $rc)"; exit $rc' _ "${FULL[@]}"
  [ -x "$SITE/bin/ray" ] && timeout 30 "$SITE/bin/ray" stop --force >/dev/null 2>&1  # whatever a timed-out sweep left

  say "sweep train, batchnorm, seed hyperparameters, 2 epochs each: CUDA graph (default, saves a checkpoint), eager, bf16"
  step train_graph 60 python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=2 --checkpoint /tmp/ck
  step evaluate 40 python3 -m job train --evaluate /tmp/ck
  step train_eager 60 python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=2 --set optim.cuda_graph=false
  step train_bf16 60 python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=2 --set optim.precision=bf16

  say "CUDA tests"
  step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py

  say "benchmark: seed pipeline vs ours, one epoch + test pass, batch 32"
  step bench 90 python3 benchmarks/epoch_throughput.py --device cuda --synthetic --repeats 1

  say "the seed experiment's compute without Ray: 3 variants x 50 epochs, one after another"
  step sequential 120 bash -c 'set -o pipefail; rc=0; start=$(date +%s%N)
    for v in basic dropout batchnorm; do python3 -m job train specs/cifar10.yaml --variant "$v" "$@" | tail -1 || rc=1; done
    echo "wall: $((($(date +%s%N) - start) / 1000000)) ms for 3 x 50 epochs (3 process starts and data preparation included)"; exit $rc' _ "${FULL[@]}"

  say "compiled step (optim.compile: Inductor, max-autotune), and where the CUDA step's time goes"
  step train_compile 120 python3 -m job train specs/cifar10.yaml --variant batchnorm "${FULL[@]}" --set optim.epochs=2 --set optim.compile=true
  step variants 150 python3 benchmarks/cuda_step_variants.py --repeats 3 --compile-mode max-autotune-no-cudagraphs

  say "done in $SECONDS s"
  find /tmp/seedsweep \( -name '*.csv' -o -name '*.html' -o -name 'manifest*.json' \) -size -4M -print0 2>/dev/null |
    tar -czf "$OUT/logs.tgz" -C / --null -T - "${LOGS#/}" 2>/dev/null
  ls -l "$OUT"
}

main 2>&1 | tee "$OUT/gpu_check.log"
