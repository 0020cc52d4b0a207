#!/usr/bin/env bash
# Installs libtorch 2.11.0 (PyPI's torch==2.11.0 wheel) into .venv and writes .cargo/config.toml
# so that tch builds against it. Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
want="2.11.0"
py="$venv/bin/python"

have_torch() {
  "$py" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$want' else 1)" 2>/dev/null
}

if [ ! -x "$py" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
if ! have_torch; then
  echo "setup: installing torch==$want and numpy from PyPI into .venv (one time, about 4 GB)" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "torch==$want" numpy
fi
have_torch || { echo "setup: torch $want is not importable from $py" >&2; exit 1; }
# Pillow: the tests' reference for image decoding (EXIF orientation) and their picture fixtures.
if ! "$py" -c "import PIL" 2>/dev/null; then
  echo "setup: installing pillow from PyPI into .venv (for the tests' fixtures)" >&2
  "$py" -m pip install --quiet --disable-pip-version-check pillow
fi

# torchvision 0.26.0 (the release that pairs with torch 2.11.0): the tests build its models to
# check convkit's against them (tests/fixtures/make_zoo.py).
if ! "$py" -c "import torchvision,sys; sys.exit(0 if torchvision.__version__.startswith('0.26.0') else 1)" 2>/dev/null; then
  echo "setup: installing torchvision==0.26.0 from PyPI into .venv (for the tests' fixtures)" >&2
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==0.26.0"
fi
# onnxruntime and safetensors: the export tests run convkit's ONNX files in a second runtime and
# load its safetensors files with the safetensors package into torchvision's models.
if ! "$py" -c "import onnxruntime, safetensors, sys; sys.exit(0 if (onnxruntime.__version__, safetensors.__version__) == ('1.32.0', '0.8.0') else 1)" 2>/dev/null; then
  echo "setup: installing onnxruntime 1.32.0 and safetensors 0.8.0 from PyPI into .venv (for the export tests)" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "onnxruntime==1.32.0" "safetensors==0.8.0"
fi
# NCCL for data-parallel training on GPUs: ProcessGroupNCCL.hpp needs CUDA headers that the
# CUDA runtime wheel lacks (crt/, cccl/); build.rs compiles the NCCL part when they are there.
cuda="$("$py" -c 'import torch;print(torch.version.cuda or "")')"
if [ -n "$cuda" ] && [ -z "$(find "$venv" -path '*nvidia*/include/crt/host_config.h' -print -quit 2>/dev/null)" ]; then
  echo "setup: installing nvidia-cuda-crt and nvidia-cuda-cccl $cuda.* headers (for the NCCL backend)" >&2
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
    "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-cccl==$cuda.*" \
    || echo "setup: no CUDA headers installed; convkit builds with the Gloo backend only" >&2
fi

torch_dir="$("$py" -c 'import torch,os;print(os.path.dirname(torch.__file__))')"
abi="$("$py" -c 'import torch;print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
mkdir -p "$root/.cargo"
config="$root/.cargo/config.toml"
content="# Written by scripts/setup.sh: tch builds against the PyPI torch==$want in .venv.
[env]
LIBTORCH = \"$torch_dir\"
LIBTORCH_CXX11_ABI = \"$abi\"
"
if [ ! -f "$config" ] || [ "$(cat "$config")" != "$(printf '%s' "$content")" ]; then
  printf '%s' "$content" > "$config.tmp" && mv "$config.tmp" "$config"
  echo "setup: wrote .cargo/config.toml (LIBTORCH=$torch_dir)" >&2
fi
