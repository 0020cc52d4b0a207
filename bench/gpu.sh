#!/usr/bin/env bash
# The GPU benchmark of issue 5: the cifar10-airbench recipe timed as airbench times it.
#
#   bench/gpu.sh prepare   here: build the release binary (it links libtorch_cuda, build.rs) and
#                          put it with the JPEG CIFAR-10 zip into device-carry/ (git-ignored,
#                          about 52 MB: carry it to the GPU machine)
#   bench/gpu.sh [RUNS]    there: print the card, unzip the data, run the recipe RUNS times
#                          (default 5) after one untimed warm-up run (cuDNN autotuning, as
#                          airbench does), then the PyTorch reference of the same recipe
#                          (bench/airbench_reference.py) on the same card and data; last line
#                          `gpu: acc=<mean> sd=<sd> seconds=<mean> runs=<N>`; then a 1-rank
#                          torchrun training with the NCCL backend (the data-parallel path)
#
# Seconds per run: whitening set-up + training + the final TTA evaluation, device-synchronised,
# from data already decoded on the device. Environment: CONVKIT_GPU_ZIP (default
# ../shared/data/cifar10-jpeg.zip, prepare only), OUT (a folder for the run metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=device-carry

if [ "${1:-}" = "prepare" ]; then
  zip="${CONVKIT_GPU_ZIP:-../shared/data/cifar10-jpeg.zip}"
  scripts/setup.sh
  cargo build --release --quiet
  readelf -d target/release/convkit | grep -q libtorch_cuda ||
    { echo "gpu.sh: target/release/convkit does not link libtorch_cuda" >&2; exit 1; }
  mkdir -p "$carry"
  install -m 755 target/release/convkit "$carry/convkit"
  install -m 644 "$zip" "$carry/cifar10-jpeg.zip"
  du -sh "$carry"
  exit 0
fi

runs="${1:-5}"
out="${OUT:-/tmp}"
torch_lib="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')"
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
export CONVKIT_DATA="${CONVKIT_DATA:-/tmp/convkit-data}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
data="$carry/cifar10-jpeg"
if [ ! -d "$data" ]; then
  python3 -m zipfile -e "$carry/cifar10-jpeg.zip" "$carry/"
fi
[ -d "$data/train" ] || { echo "gpu.sh: no $data/train after unzipping" >&2; exit 1; }

# Decode once into the cache (not timed), then the timed runs.
"$carry/convkit" data info "$data" >/dev/null
"$carry/convkit" bench --recipe cifar10-airbench --data "$data" --device cuda \
  --runs "$runs" --warmup-runs 1 --out "$out/bench-airbench" | tee "$out/convkit-gpu.txt"
python3 bench/airbench_reference.py --data "$data" --runs "$runs" --warmup-runs 1 \
  | tee "$out/reference-gpu.txt" || echo "gpu.sh: the PyTorch reference failed" >&2
line="$(grep '^recipe:' "$out/convkit-gpu.txt")"
echo "gpu: ${line#recipe: }"

# Data-parallel launch path on the GPU (issue 15): one rank through torchrun with the NCCL
# backend (auto picks it on CUDA when the binary was built with NCCL), 2 epochs of the airbench
# recipe; the run's first lines name the backend. Multi-GPU scaling needs a machine with
# several GPUs: the same command with --nproc-per-node N.
if command -v torchrun >/dev/null; then
  torchrun --no-python --nproc-per-node 1 "$carry/convkit" train --config cifar10-airbench \
    --data "$data" --device cuda --epochs 2 --out "$out/ddp-nccl" 2>&1 | tee "$out/ddp-nccl.txt" |
    grep -E "data-parallel|epoch|test accuracy" || echo "gpu.sh: the torchrun run failed" >&2
fi
