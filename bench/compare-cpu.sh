#!/usr/bin/env bash
# Runs `convkit bench` and the PyTorch reference (bench/pytorch_reference.py, the identical Net8
# and training step) on this machine, alternating, ROUNDS times each, and prints the median
# training images/s of both and, last, `ratio: X` (convkit / PyTorch).
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
echo "cpu: $(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2}'), $threads threads"
echo "median training: convkit $mo img/s, pytorch $mt img/s (Net8, batch 128, fp32)"
echo "ratio: $(awk -v a="$mo" -v b="$mt" 'BEGIN{printf "%.3f", a/b}')"
