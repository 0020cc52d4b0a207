#!/usr/bin/env bash
# Runs `convkit bench` and the PyTorch reference (bench/pytorch_reference.py, the identical Net8
# and training step) on this machine, alternating, ROUNDS times each, and prints the median
# training images/s of both, the SupCon loss timing of both, ResNet-18 feature extraction of
# both, and, last, `ratio: X` (convkit training images/s / PyTorch's).
#   bench/compare-cpu.sh [ROUNDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
scripts/setup.sh
cargo build --release --quiet
ck=target/release/convkit
py=.venv/bin/python
threads="$(nproc)"
ours=(); theirs=()
for i in $(seq "$rounds"); do
  o=$("$ck" bench --model net8 --batch 128 --steps 20 --warmup 3 | awk '/^train:/{print $2}')
  t=$("$py" bench/pytorch_reference.py --batch 128 --steps 20 --warmup 3 --threads "$threads" | awk '/^train:/{print $2}')
  echo "round $i: convkit $o img/s, pytorch $t img/s"
  ours+=("$o"); theirs+=("$t")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
so=(); st=()
for i in $(seq "$rounds"); do
  so+=("$("$ck" bench --supcon --steps 10 --warmup 2 | awk '/^supcon:/{print $2}')")
  st+=("$("$py" bench/pytorch_reference.py --supcon --steps 10 --warmup 2 --threads "$threads" | awk '/^supcon:/{print $2}')")
done
mso=$(median "${so[@]}"); mst=$(median "${st[@]}")
echo "median SupCon loss forward+backward (2x1024x128): convkit $mso /s, pytorch $mst /s"
echo "supcon time ratio (convkit / pytorch, target <= 1.2): $(awk -v a="$mso" -v b="$mst" 'BEGIN{printf "%.3f", b/a}')"
fo=(); ft=()
for i in $(seq "$rounds"); do
  fo+=("$("$ck" bench --features --model resnet18 --size 112 --infer-batch 32 --steps 5 --warmup 2 | awk '/^features:/{print $2}')")
  ft+=("$("$py" bench/pytorch_reference.py --features --model resnet18 --size 112 --infer-batch 32 --steps 5 --warmup 2 --threads "$threads" | awk '/^features:/{print $2}')")
done
mfo=$(median "${fo[@]}"); mft=$(median "${ft[@]}")
echo "median feature extraction (ResNet-18 body, 112 px, batch 32): convkit $mfo img/s, pytorch $mft img/s"
echo "features ratio (convkit / pytorch, target >= 0.95): $(awk -v a="$mfo" -v b="$mft" 'BEGIN{printf "%.3f", a/b}')"
echo "cpu: $(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2}'), $threads threads"
echo "median training: convkit $mo img/s, pytorch $mt img/s (Net8, batch 128, fp32)"
echo "ratio: $(awk -v a="$mo" -v b="$mt" 'BEGIN{printf "%.3f", a/b}')"
