#!/usr/bin/env bash
# The first check of p2p on a GPU node, in one call that fits a short allocation (issue 9).
#
#   benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR        # from the repository root, on the GPU node
#
# WHEELS_DIR holds the wheels the node lacks (it may have no internet): webdataset, submitit,
# pytest and their dependencies, made on any machine with benchmarks/gpu-check-wheels.sh;
# nvidia-dali-cuda130 too if it fits the transfer (without it the DALI rows and tests are
# skipped and say so). OUT_DIR must be new or empty; it receives gpu-check.json (everything),
# summary.md (a page), the parts' logs and raw results. Parts, each under its own time limit
# and all under one deadline (P2P_GPU_CHECK_BUDGET_S, default 440 s, plus 20 s for the report), so the
# whole finishes within 8 minutes whatever hangs; what did not run is reported as such:
#
#   install      the wheels from WHEELS_DIR (pip --no-index)
#   environment  GPU, driver, versions -> environment.json, nvidia-smi into logs/
#   shards       COCO-like JPEGs cut from scikit-image's photos -> p2p shard at 286 px
#   pytest       pytest -m gpu (tests/test_gpu.py) -> pytest.xml
#   lab          p2p bench lab --device cuda -> lab.json
#   step         p2p bench step --model full --batch-size 64, every mode, MFU -> step.json
#   train-eager  300 colorization steps from the shards, bf16, eager          -> runs/eager
#   train-fast   the same, seed and data, + CUDA graphs + torch.compile        -> runs/fast
#                (after `step`, whose `all` row compiled the same networks: inductor's cache)
#   data         p2p bench data on the shards, backends that import here -> data.json
#   report       p2p bench gpu-report OUT_DIR: losses within tolerance, graphs and compile in
#                effect from the metrics rows, targets -> gpu-check.json, summary.md
#
# P2P_GPU_CHECK_STUB=1 runs every part at toy sizes on the CPU: how the budget was planned
# (benchmarks/README.md). Exit code: the report's (0 every check passed, 1 not).
set -u -o pipefail

WHEELS=${1:?usage: benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR}
OUT=${2:?usage: benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${P2P_GPU_CHECK_BUDGET_S:-440}
REPORT_S=20   # kept for the report, whatever the parts before it take
STUB=${P2P_GPU_CHECK_STUB:-0}
STEPS=300

if [ ! -f p2p/__init__.py ]; then echo "gpu-check: run it from the repository root" >&2; exit 2; fi
if [ ! -d "$WHEELS" ]; then echo "gpu-check: no wheel folder $WHEELS" >&2; exit 2; fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "gpu-check: $OUT is not empty; give a new folder (nothing is overwritten)" >&2; exit 2
fi
mkdir -p "$OUT/logs" "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s.%N)
: > "$OUT/parts.tsv"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# part NAME LIMIT_S COMMAND...: COMMAND under min(LIMIT_S, the time left before the report),
# its output in logs/NAME.log, a line in parts.tsv (name, exit code, seconds, limit).
part() {
    local name=$1 limit=$2; shift 2
    local left
    left=$(awk -v t0="$T0" -v now="$(date +%s.%N)" -v b="$BUDGET" 'BEGIN { printf "%d", b - (now - t0) }')
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$OUT/parts.tsv"
        echo "== $name: skipped, no time left"
        return
    fi
    echo "== $name (at most ${limit} s)"
    local t rc
    t=$(date +%s.%N)
    # through bash: COMMAND may be one of the functions below (exported), which timeout cannot run
    timeout --kill-after=15 "$limit" bash -c '"$@"' "$name" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(elapsed "$t")" "$limit" >> "$OUT/parts.tsv"
    echo "   exit $rc after $(elapsed "$t") s; log: $OUT/logs/$name.log"
}

install_wheels() {
    local rc=0 pkg
    for pkg in webdataset submitit pytest pytest-timeout; do
        "$PY" -m pip install --no-index --find-links "$WHEELS" --quiet "$pkg" || { echo "not installed: $pkg"; rc=1; }
    done
    if ls "$WHEELS"/pytorch_fid-*.whl > /dev/null 2>&1; then  # gpu-check-wheels.sh --with-metrics
        "$PY" -m pip install --no-index --find-links "$WHEELS" --quiet pytorch-fid lpips torchmetrics || rc=1
    fi
    if ls "$WHEELS"/nvidia_dali_cuda130-*.whl > /dev/null 2>&1; then
        "$PY" -m pip install --no-index --find-links "$WHEELS" --quiet nvidia-dali-cuda130 || rc=1
    else
        echo "no nvidia-dali-cuda130 wheel in $WHEELS: DALI rows and tests are skipped"
    fi
    return $rc
}

environment() {
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
    "$PY" - "$OUT/environment.json" <<'EOF'
import json, sys
from p2p.bench.common import environment
from p2p.train.flops import gpu_model, peak_flops
import torch
env = environment()
if torch.cuda.is_available():
    env["gpu_model"] = gpu_model(env["gpu"])
    env["peak_flops_bf16"] = peak_flops(torch.device("cuda"), "bf16")
    env["cuda_runtime"] = torch.version.cuda
    env["cudnn"] = torch.backends.cudnn.version()
json.dump(env, open(sys.argv[1], "w"), indent=2, default=str)
print(json.dumps(env, indent=2, default=str))
EOF
}

export -f install_wheels environment
export PY WHEELS OUT

if [ "$STUB" = 1 ]; then  # toy sizes on the CPU: plans the budget, exercises every part and the report

    PHOTOS=(32 0.25 40)
    MODEL=(model.ngf=8 model.ndf=8 model.num_downs=5 data.image_size=32 data.load_size=40 train.batch_size=4
           data.workers=1 train.device=cpu)
    STEP_ARGS=(--device cpu --quick --ngf 8 --ndf 8 --num-downs 5 --image-size 32 --batch-size 2 --steps 1
               --repeats 1 --warmup 1)
    LAB_ARGS=(--device cpu --quick --images 4 --size 64)
    DATA_ARGS=(--quick)
else

    PHOTOS=(256 1.0 286)  # 256 COCO-sized JPEGs, shards at the pix2pix load size
    MODEL=(model.ngf=64 model.ndf=64 model.num_downs=8 data.image_size=256 data.load_size=286
           train.batch_size=64 data.workers=8 train.device=cuda)
    STEP_ARGS=(--device cuda --model full --batch-size 64 --steps 10 --repeats 3 --warmup 2)
    LAB_ARGS=(--device cuda)
    DATA_ARGS=(--images 256 --repeats 2)
fi
SHARDS=$OUT/work/shards
TRAIN=(train run.out_dir="$OUT/runs" run.seed=0 task.name=colorize data.source="$SHARDS" data.backend=wds
       "${MODEL[@]}" train.max_steps=$STEPS train.log_every=10 train.eval_every=0 train.sample_every=0
       train.ckpt_every=0 train.precision=bf16 train.channels_last=true)

"$PY" - "$OUT/check.json" "$BUDGET" "$STUB" "$STEPS" "$WHEELS" <<'EOF'
import datetime, json, os, sys
out, budget, stub, steps, wheels = sys.argv[1:]
json.dump({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "budget_s": int(budget), "stub": stub == "1", "train_steps": int(steps),
           "wheels": sorted(os.listdir(wheels))}, open(out, "w"), indent=2)
EOF

part install 90 install_wheels
part environment 30 environment
part shards 60 "$PY" -c "import sys; from pathlib import Path; from p2p.bench.photos import build_shards; \
print(build_shards(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))" \
    "$OUT/work" "${PHOTOS[@]}"
part pytest 150 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --junitxml "$OUT/pytest.xml"
part lab 30 "$PY" -m p2p bench lab "${LAB_ARGS[@]}" --json "$OUT/lab.json"
part step 200 "$PY" -m p2p bench step "${STEP_ARGS[@]}" --json "$OUT/step.json"
part train-eager 70 "$PY" -m p2p "${TRAIN[@]}" run.name=eager
part train-fast 120 "$PY" -m p2p "${TRAIN[@]}" run.name=fast train.cuda_graphs=true train.compile=true

# the backends that can run here (bench data reports the rows it could not run)
BACKENDS=wds,folder
MISSING=
if "$PY" -c "import nvidia.dali" 2> /dev/null; then BACKENDS=$BACKENDS,dali; else MISSING="dali (not importable)"; fi
if "$PY" -c "from p2p.config import BACKENDS; raise SystemExit('nvjpeg' not in BACKENDS)" 2> /dev/null; then
    BACKENDS=$BACKENDS,nvjpeg
else
    MISSING="${MISSING:+$MISSING, }nvjpeg (not in this build)"
fi
echo "$BACKENDS${MISSING:+; left out: $MISSING}" > "$OUT/backends.txt"
part data 60 "$PY" -m p2p bench data --source "$SHARDS" --backends "$BACKENDS" "${DATA_ARGS[@]}" \
    --json "$OUT/data.json"

BUDGET=$(awk -v b="$BUDGET" -v r="$REPORT_S" 'BEGIN { print b + r }')
part report "$REPORT_S" "$PY" -m p2p bench gpu-report "$OUT"
cat "$OUT/logs/report.log"
echo "gpu-check: $(elapsed "$T0") s in all; results in $OUT"
rc=$(awk -F'\t' '$1 == "report" { print $2 }' "$OUT/parts.tsv")
exit "${rc:-1}"
