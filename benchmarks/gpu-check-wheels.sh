#!/usr/bin/env bash
# The wheels benchmarks/gpu-check.sh installs on a GPU node without internet, downloaded here:
#
#   benchmarks/gpu-check-wheels.sh DIR [--with-metrics] [--with-dali]
#
# Exactly what the node lacks (its preinstalled stack: Python 3.12, torch, torchvision,
# accelerate, numpy, onnx/onnxruntime, torchmetrics, pytest, pytest-timeout, scikit-image, rich,
# pillow, pyyaml): webdataset, braceexpand, submitit and its cloudpickle, simplejpeg (the
# loaders' JPEG decoder: without it every CPU loader falls back to torchvision, a notice in the
# rows), each without dependencies (--no-deps), for CPython 3.12 on manylinux x86_64. The
# check installs a wheel only when its package does not import on the node, so none of them
# shadows the node's own. --with-metrics adds pytorch-fid and lpips (p2p eval's FID and LPIPS
# in tests/test_gpu.py's eval test, which skips without them). --with-dali adds
# nvidia-dali-cuda130 (about 476 MB: past a 64 MB transfer; without it the DALI rows and tests
# are skipped and say so).
set -euo pipefail
DIR=${1:?usage: benchmarks/gpu-check-wheels.sh DIR [--with-metrics] [--with-dali]}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$DIR"
# the node's interpreter and platform, whatever this machine runs; pip matches each manylinux tag exactly
NODE=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
"$PY" -m pip download --quiet "${NODE[@]}" --dest "$DIR" webdataset braceexpand submitit cloudpickle simplejpeg
case " ${*:2} " in *" --with-metrics "*)
    "$PY" -m pip download --quiet "${NODE[@]}" --dest "$DIR" pytorch-fid lpips ;;
esac
case " ${*:2} " in *" --with-dali "*)
    "$PY" -m pip download --quiet "${NODE[@]}" --dest "$DIR" nvidia-dali-cuda130 ;;
esac
ls -l "$DIR"
du -sh "$DIR"
