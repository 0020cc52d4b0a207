#!/usr/bin/env bash
# Before/after check for a refactor that must not change numbers (issue 14): runs the same small
# trainings with the built binary and collects each run's metrics.jsonl and summary.json under
# OUT. Compare two such folders with bench/refactor_compare.py. CPU only: training is
# deterministic there.
# Usage: bench/refactor_check.sh OUT   (CIFAR10_JPEG=... to point at the JPEG copy)
set -euo pipefail
out=$(realpath -m "${1:?usage: bench/refactor_check.sh OUT}")
jpeg=${CIFAR10_JPEG:-$(dirname "$0")/../../shared/data/cifar10-jpeg}
bin=${CONVKIT_BIN:-$(dirname "$0")/../target/release/convkit}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CONVKIT_DATA="$work/cache"
mkdir -p "$out"
keep() { mkdir -p "$out/$1"; cp "$work/$1"/{metrics.jsonl,summary.json} "$out/$1/" 2>/dev/null || cp "$work/$1"/summary.json "$out/$1/"; }

# 1. The resume test's configuration (tests/training.rs small_config(1000, 2)).
"$bin" train --data synthetic --device cpu --out "$work/resume-config" \
  --set data.train_limit=1000 --set data.test_limit=1000 --set 'model.name="cnn"' \
  --set 'model.widths=[16, 32, 64]' --set train.epochs=2 --set train.batch_size=64 \
  --set optim.lr=0.05 --set 'schedule.kind="one-cycle"' --set 'augment=["crop:2:reflect", "flip"]'
keep resume-config
# 2. cifar10-fast-cpu, 2 epochs, 5,000 training images of the JPEG copy, full test set.
"$bin" train --config cifar10-fast-cpu --data "$jpeg" --device cpu --epochs 2 --train-limit 5000 \
  --out "$work/fast-cpu"
keep fast-cpu
# 3. SupCon, 2 epochs on 2,000 images (kNN monitor on 1,000 test images), then its probe.
"$bin" supcon --config cifar10-supcon --data "$jpeg" --device cpu --epochs 2 --train-limit 2000 \
  --batch-size 128 --set data.test_limit=1000 --out "$work/supcon"
keep supcon
"$bin" probe "$work/supcon" --device cpu --epochs 5 --out "$work/supcon-probe"
keep supcon-probe
# 4. The transfer strategies from the supcon encoder on 1,000 images, 2 epochs each.
for s in linear-probe head-then-unfreeze partial:1 full; do
  name=finetune-${s/:/-}
  "$bin" finetune --data "$jpeg" --device cpu --weights "$work/supcon/checkpoints/last.safetensors" \
    --model resnet20 --strategy "$s" --epochs 2 --train-limit 1000 --set data.test_limit=1000 \
    --batch-size 64 --lr 0.05 --out "$work/$name"
  keep "$name"
done
echo "collected under $out"
