#!/usr/bin/env bash
# The wheels benchmarks/gpu-check.sh installs on a GPU node without internet, downloaded here:
#
#   benchmarks/gpu-check-wheels.sh DIR [--with-dali] [--with-metrics]
#
# Pure-Python wheels (any Python 3, any platform), about 1 MB in all: webdataset, submitit,
# pytest, pytest-timeout and what they need beyond the node's preinstalled stack (torch,
# torchvision, accelerate, scikit-image, rich, numpy, pillow). --with-dali adds
# nvidia-dali-cuda130 for the node's Python and platform (about 476 MB: it does not fit a
# transfer capped at 64 MB; without it the DALI rows and tests are skipped). --with-metrics adds
# the [metrics] extra's pure-Python wheels (pytorch-fid, lpips, torchmetrics, about 2 MB; scipy
# comes with scikit-image) for test_gpu's eval test, which skips without them: its time is not
# in the check's budget plan, so it is left out unless asked for.
set -euo pipefail
DIR=${1:?usage: benchmarks/gpu-check-wheels.sh DIR [--with-dali] [--with-metrics]}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$DIR"
# --platform any --abi none: the pure-Python wheel of each, never one built for this machine
"$PY" -m pip download --quiet --only-binary=:all: --no-deps --platform any --implementation py \
    --python-version 3.10 --abi none --dest "$DIR" \
    webdataset braceexpand submitit cloudpickle typing_extensions \
    pytest pluggy iniconfig packaging pygments pytest-timeout exceptiongroup tomli
case " ${*:2} " in *" --with-dali "*)  # built for this machine's Python: run it with the node's version
    "$PY" -m pip download --quiet --only-binary=:all: --no-deps --dest "$DIR" nvidia-dali-cuda130 ;;
esac
case " ${*:2} " in *" --with-metrics "*)
    "$PY" -m pip download --quiet --only-binary=:all: --no-deps --platform any --implementation py \
        --python-version 3.10 --abi none --dest "$DIR" pytorch-fid lpips tqdm torchmetrics lightning-utilities ;;
esac
ls -l "$DIR"
du -sh "$DIR"
