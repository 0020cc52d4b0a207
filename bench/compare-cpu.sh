#!/usr/bin/env bash
# Runs `convkit bench` and the PyTorch reference (bench/pytorch_reference.py: the identical
# networks, steps and timing) on this machine, alternating, ROUNDS times each, and prints the
# medians of both and their ratio for:
#   supcon    SupCon loss forward+backward, 2x1024 128-d features   (target: time <= 1.2x)
#   features  ResNet-18 body feature extraction, 112 px              (target: >= 0.95x img/s)
#   pretrain  SupCon pre-training steps, ResNet-20, batch 128, two augmented views
#                                                                    (target: >= 0.95x img/s)
#   zoo       feature extraction at 224 px, batch 16, of mobilenet_v3_large, efficientnet_b0
#             and convnext_tiny against torchvision's own models (last linear layer removed),
#             channels-last in both                          (target: >= 0.95x img/s each)
#   predict   `convkit predict RUN FOLDER` over the 10,000 test images of $CIFAR10_JPEG against
#             bench/predict_reference.py (the run's TorchScript export in PyTorch, a DataLoader
#             with PIL decoding, 2 workers), same batch 64     (target: >= 0.95x img/s)
#             RUN: $PREDICT_RUN, or a ResNet-20 trained for 1 epoch on 5,000 images first
#   train     Net8 training, batch 128 (printed last as `ratio: X`)
#   airbench  time to 80% test accuracy, cifar10-airbench-cpu recipe against
#             bench/airbench_reference.py (airbench94 in PyTorch, same widths, batch, epochs),
#             on $CIFAR10_JPEG (default ../shared/data/cifar10-jpeg)  (target: time <= 0.9x)
#             About 10 minutes a round; not in the default sections.
#   bench/compare-cpu.sh [ROUNDS] [SECTIONS]   (default 5 rounds, sections supcon,features,
#   pretrain,train; e.g. `bench/compare-cpu.sh 1 airbench`, `bench/compare-cpu.sh 3 zoo`)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
sections="${2:-supcon,features,pretrain,train}"
scripts/setup.sh
cargo build --release --quiet
ck=target/release/convkit
py=.venv/bin/python
threads="$(nproc)"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
wanted() { [[ ",$sections," == *",$1,"* ]]; }

# compare NAME "convkit args" "pytorch args": medians of the `NAME:` value of both; sets mo, mt.
# Each side's full output goes to runs/compare-cpu/NAME-{convkit,pytorch}-ROUND.txt.
compare() {
  local name="$1" ours=() theirs=() log=runs/compare-cpu
  mkdir -p "$log"
  for i in $(seq "$rounds"); do
    "$ck" bench $2 > "$log/$name-convkit-$i.txt"
    ours+=("$(awk -v k="$name:" '$1==k{print $2}' "$log/$name-convkit-$i.txt")")
    "$py" "${reference:-bench/pytorch_reference.py}" $3 --threads "$threads" > "$log/$name-pytorch-$i.txt"
    theirs+=("$(awk -v k="$name:" '$1==k{print $2}' "$log/$name-pytorch-$i.txt")")
    echo "round $i $name: convkit ${ours[-1]}, pytorch ${theirs[-1]}"
  done
  mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }

if wanted supcon; then
  compare supcon "--supcon --steps 10 --warmup 2" "--supcon --steps 10 --warmup 2"
  echo "median SupCon loss forward+backward (2x1024x128): convkit $mo /s, pytorch $mt /s"
  echo "supcon time ratio (convkit / pytorch, target <= 1.2): $(ratio "$mt" "$mo")"
fi
if wanted features; then
  args="--features --model resnet18 --size 112 --infer-batch 32 --steps 5 --warmup 2"
  compare features "$args" "$args"
  echo "median feature extraction (ResNet-18 body, 112 px, batch 32): convkit $mo img/s, pytorch $mt img/s"
  echo "features ratio (convkit / pytorch, target >= 0.95): $(ratio "$mo" "$mt")"
fi
if wanted zoo; then
  for m in mobilenet_v3_large efficientnet_b0 convnext_tiny; do
    args="--features --model $m --size 224 --infer-batch 16 --steps 8 --warmup 3"
    compare features "$args" "$args"
    echo "median feature extraction ($m, 224 px, batch 16): convkit $mo img/s, pytorch $mt img/s"
    echo "$m features ratio (convkit / pytorch, target >= 0.95): $(ratio "$mo" "$mt")"
  done
fi
if wanted predict; then
  jpeg="${CIFAR10_JPEG:-../shared/data/cifar10-jpeg}"
  run="${PREDICT_RUN:-runs/compare-predict}"
  if [ -z "${PREDICT_RUN:-}" ] && [ ! -d "$run/checkpoints" ]; then
    "$ck" train --model resnet20 --data "$jpeg" --epochs 1 --train-limit 5000 --out "$run" > /dev/null
  fi
  "$ck" export "$run" --format torchscript --out runs/compare-cpu/predict-model.pt > /dev/null
  ours=(); theirs=(); log=runs/compare-cpu
  for i in $(seq "$rounds"); do
    "$ck" predict "$run" "$jpeg/test" --batch 64 --csv "$log/predict-$i.csv" 2> "$log/predict-convkit-$i.txt"
    ours+=("$(grep -o '([0-9.]* images/s)' "$log/predict-convkit-$i.txt" | tr -d '(' | awk '{print $1}')")
    "$py" bench/predict_reference.py --model runs/compare-cpu/predict-model.pt --data "$jpeg/test" \
      --batch 64 --threads "$threads" > "$log/predict-pytorch-$i.txt"
    theirs+=("$(awk '$1=="predict:"{print $2}' "$log/predict-pytorch-$i.txt")")
    echo "round $i predict: convkit ${ours[-1]}, pytorch ${theirs[-1]}"
  done
  mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
  echo "median folder prediction (10,000 JPEGs, batch 64): convkit $mo img/s, pytorch $mt img/s"
  echo "predict ratio (convkit / pytorch, target >= 0.95): $(ratio "$mo" "$mt")"
fi
if wanted pretrain; then
  compare pretrain "--pretrain --model resnet20 --batch 128 --steps 8 --warmup 2" \
    "--pretrain --batch 128 --steps 8 --warmup 2"
  echo "median SupCon pre-training (ResNet-20, batch 128 x 2 views): convkit $mo img/s, pytorch $mt img/s"
  echo "pretrain ratio (convkit / pytorch, target >= 0.95): $(ratio "$mo" "$mt")"
fi
echo "cpu: $(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2}'), $threads threads"
if wanted airbench; then
  "$py" -c "import PIL" 2>/dev/null || "$py" -m pip install --quiet pillow
  jpeg="${CIFAR10_JPEG:-../shared/data/cifar10-jpeg}"
  reference=bench/airbench_reference.py compare time_to_80 "--recipe cifar10-airbench-cpu --runs 1 --data $jpeg --out runs/compare-airbench" \
    "--data $jpeg --widths 32,64,64 --batch 256 --epochs 4 --eval-every 1"
  echo "median time to 80% (airbench recipe, widths 32/64/64, batch 256): convkit $mo s, pytorch $mt s"
  echo "airbench time-to-80 ratio (convkit / pytorch, target <= 0.9): $(ratio "$mo" "$mt")"
fi
if wanted train; then
  compare train "--model net8 --batch 128 --steps 20 --warmup 3" "--batch 128 --steps 20 --warmup 3"
  echo "median training: convkit $mo img/s, pytorch $mt img/s (Net8, batch 128, fp32)"
  echo "ratio: $(ratio "$mo" "$mt")"
fi
