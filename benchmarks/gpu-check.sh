#!/usr/bin/env bash
# The first check of p2p on a GPU node, in one call that fits a short allocation (issues 9, 21).
#
#   benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR        # from the repository root, on the GPU node
#
# WHEELS_DIR holds the wheels the node lacks (it may have no internet), made on any machine with
# benchmarks/gpu-check-wheels.sh; each is installed only when its package does not import on
# the node already (nothing the node has is shadowed), and a wheel that does not install is
# reported, not fatal. OUT_DIR must be new or empty. The work (photos, shards, runs,
# checkpoints, logs) goes to a scratch folder (P2P_GPU_CHECK_WORK, default a new folder under
# TMPDIR); OUT_DIR receives only gpu-check.json, summary.md, parts.tsv and results.tar.gz
# (logs, metrics.jsonl, the parts' JSON: p2p/bench/gpu_check_files.py), and the first two are
# rewritten after every part, so whenever the call ends OUT_DIR holds the verdict so far.
#
# Parts, in the order that decides the verdict first, each ending by its mark in PLAN (the sum
# of the planned seconds up to it, scaled to the deadline P2P_GPU_CHECK_BUDGET_S, default 440 s):
# time a part leaves unused goes to the parts after it, and no part can take theirs. A part
# cut at its limit gets a polite signal first (pytest SIGINT, which writes its JUnit file; the
# rest SIGTERM) and SIGKILL a grace later, inside its own limit. The report comes after the
# deadline with its own REPORT_S, whatever happened before. benchmarks/README.md has the plan.
#
# P2P_GPU_CHECK_STUB=1 runs every part at toy sizes on the CPU (P2P_GPU_CHECK_STEPS sets the
# trainings' steps, 300 by default); with it, P2P_GPU_CHECK_PLANT="hang:PART kill:PART"
# rehearses failures: a hang that ignores SIGTERM and SIGINT, a SIGKILL 2 s into the part
# (tests/test_gpu_check.py). P2P_GPU_CHECK_ONLY="PART ..." runs only those parts (the others are
# reported as not run), keeping the plan's marks. Exit code: 0 when every check passed and every part finished.
set -u -o pipefail

WHEELS=${1:?usage: benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR}
OUT=${2:?usage: benchmarks/gpu-check.sh WHEELS_DIR OUT_DIR}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${P2P_GPU_CHECK_BUDGET_S:-440}
REPORT_S=20   # after the deadline, for the final report
STUB=${P2P_GPU_CHECK_STUB:-0}
STEPS=${P2P_GPU_CHECK_STEPS:-300}
PLANT=${P2P_GPU_CHECK_PLANT:-}
ONLY=${P2P_GPU_CHECK_ONLY:-}
# the bench suites with a GPU-check part (p2p.specs.suites, in its order): name, planned seconds
# and flags, tab-separated; in the flags {shards} is SHARDS and {backends} what `backends` finds
# (LAST_PARTS: those whose spec runs them after pytest-trainings)
mapfile -t SUITE_PARTS < <("$PY" -c "import sys; from p2p.bench.gpu_check_files import suite_parts; \
print('\n'.join(suite_parts(sys.argv[1] == '1')))" "$STUB" 2> /dev/null)
mapfile -t LAST_PARTS < <("$PY" -c "import sys; from p2p.bench.gpu_check_files import suite_parts; \
print('\n'.join(suite_parts(sys.argv[1] == '1', last=True)))" "$STUB" 2> /dev/null)
SUITE_PLAN=()
for line in "${SUITE_PARTS[@]}"; do IFS=$'\t' read -r name seconds _ <<< "$line"; SUITE_PLAN+=("$name:$seconds"); done
LAST_PLAN=()
for line in "${LAST_PARTS[@]}"; do IFS=$'\t' read -r name seconds _ <<< "$line"; LAST_PLAN+=("$name:$seconds"); done
# name:planned seconds on an H100/H200, in the order they run (440 in all: benchmarks/README.md)
PLAN=(install:10 environment:15 shards:25 train-eager:55 train-fast:110 pytest:60 "${SUITE_PLAN[@]}"
      pytest-trainings:50 "${LAST_PLAN[@]}")
# the stub's own shares (CPU costs: every part is mostly Python and torch start-up), also 440 in all
[ "$STUB" = 1 ] && PLAN=(install:20 environment:40 shards:40 train-eager:60 train-fast:60 pytest:40
                         "${SUITE_PLAN[@]}" pytest-trainings:40 "${LAST_PLAN[@]}")

if [ ! -f p2p/__init__.py ]; then echo "gpu-check: run it from the repository root" >&2; exit 2; fi
if [ ! -d "$WHEELS" ]; then echo "gpu-check: no wheel folder $WHEELS" >&2; exit 2; fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "gpu-check: $OUT is not empty; give a new folder (nothing is overwritten)" >&2; exit 2
fi
if [ "$STUB" != 1 ] && [ -n "$PLANT" ]; then echo "gpu-check: P2P_GPU_CHECK_PLANT needs P2P_GPU_CHECK_STUB=1" >&2; exit 2; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WHEELS=$(cd "$WHEELS" && pwd)
WORK=${P2P_GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/p2p-gpu-check.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/runs"
WORK=$(cd "$WORK" && pwd)
SITE=$WORK/site   # the wheels the node lacked; after the node's own packages on the path
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$SITE" PYTHONUNBUFFERED=1
T0=$(date +%s.%N)
SCALE=$(awk -v b="$BUDGET" 'BEGIN { print b / 440 }')
: > "$OUT/parts.tsv"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# the mark of part NAME: seconds after T0 by which it must have ended
mark_of() {
    local entry sum=0
    for entry in "${PLAN[@]}"; do
        sum=$((sum + ${entry#*:}))
        [ "${entry%%:*}" = "$1" ] && break
    done
    awk -v s="$sum" -v k="$SCALE" 'BEGIN { printf "%.1f", s * k }'
}

report() {  # the verdict so far into OUT, its log in WORK/logs/report.log; in well under a second:
    # the report module imports no torch (the `p2p bench` command would: 10 s on a loaded node)
    timeout -s KILL "$1" "$PY" -c "import sys; from pathlib import Path; from p2p.bench.gpu_check import \
write_report; r = write_report(Path(sys.argv[1]), Path(sys.argv[2])); print('passed' if r['passed'] else \
'not passed', 'did not finish:', ' '.join(r['unfinished'])); sys.exit(0 if r['passed'] and r['complete'] else 1)" \
        "$WORK" "$OUT" >> "$WORK/logs/report.log" 2>&1
}

# part NAME COMMAND...: COMMAND until NAME's mark, its output in WORK/logs/NAME.log, a line in
# OUT/parts.tsv (name, exit code, seconds, limit), then the report rewritten.
part() {
    local name=$1; shift
    local limit grace sig=TERM
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        printf '%s\tunselected\t0\t0\n' "$name" >> "$OUT/parts.tsv"
        return
    fi
    limit=$(awk -v t0="$T0" -v now="$(date +%s.%N)" -v m="$(mark_of "$name")" 'BEGIN { printf "%d", t0 + m - now }')
    if [ "$limit" -lt 3 ]; then
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$OUT/parts.tsv"
        echo "== $name: skipped, no time left"
        report 20
        return
    fi
    # the grace for a clean stop (a training saves and closes its rows; pytest writes JUnit)
    grace=$(( limit / 5 < 15 ? (limit / 5 > 1 ? limit / 5 : 1) : 15 ))
    case $name in pytest*) sig=INT ;; esac
    local cmd=("$@")
    case " $PLANT " in
        *" hang:$name "*) cmd=(bash -c 'trap "" TERM INT; while :; do sleep 1; done') ;;
        *" kill:$name "*) limit=2 grace=0 sig=KILL ;;  # the out-of-memory killer, 2 s in
    esac
    echo "== $name (at most ${limit} s)"
    local t rc
    t=$(date +%s.%N)
    # through bash: COMMAND may be one of the functions below (exported), which timeout cannot run
    if [ "$grace" -gt 0 ]; then
        timeout -s "$sig" --kill-after="$grace" "$((limit - grace))" bash -c '"$@"' "$name" "${cmd[@]}" \
            > "$WORK/logs/$name.log" 2>&1
    else
        timeout -s "$sig" "$limit" bash -c '"$@"' "$name" "${cmd[@]}" > "$WORK/logs/$name.log" 2>&1
    fi
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(elapsed "$t")" "$limit" >> "$OUT/parts.tsv"
    echo "   exit $rc after $(elapsed "$t") s; log: $WORK/logs/$name.log"
    report 20
}

install_wheels() {  # each wheel whose package the node lacks, into $SITE; problems reported, not fatal
    local missing=() whl rc=0
    mkdir -p "$SITE"
    # find_spec, not import: whether the node has it, without importing torch through lpips & co
    mapfile -t missing < <("$PY" - "$WHEELS"/*.whl <<'EOF'
import importlib.util, os, sys
for whl in sys.argv[1:]:
    if not whl.endswith(".whl"):
        continue
    dist = os.path.basename(whl).split("-")[0]
    if importlib.util.find_spec(dist.lower()) is None:
        print(whl)
    else:
        print(f"{dist}: the node's own (kept)", file=sys.stderr)
EOF
)
    [ "${#missing[@]}" -eq 0 ] && echo "nothing to install from $WHEELS"
    if [ "${#missing[@]}" -gt 0 ]; then
        if "$PY" -m pip install --no-index --no-deps --no-compile --quiet --target "$SITE" "${missing[@]}"; then
            for whl in "${missing[@]}"; do echo "installed: $(basename "$whl")"; done
        else
            rc=1  # one by one, to say which
            for whl in "${missing[@]}"; do
                if "$PY" -m pip install --no-index --no-deps --no-compile --quiet --target "$SITE" "$whl"; then
                    echo "installed: $(basename "$whl")"
                else
                    echo "NOT installed: $(basename "$whl"): the parts that need it fail or skip"
                fi
            done
        fi
    fi
    "$PY" -c "import simplejpeg" 2> /dev/null || echo "simplejpeg missing: CPU loaders decode with torchvision (a notice)"
    return $rc
}

environment() {
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
    "$PY" - "$WORK/environment.json" <<'EOF'
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

backends() {  # the backends bench data can run here (it reports the rows it could not run)
    local have=wds,folder missing=
    if "$PY" -c "import nvidia.dali" 2> /dev/null; then have=$have,dali; else missing="dali (not importable)"; fi
    if "$PY" -c "from p2p.config import BACKENDS; raise SystemExit('nvjpeg' not in BACKENDS)" 2> /dev/null; then
        have=$have,nvjpeg
    else
        missing="${missing:+$missing, }nvjpeg (not in this build)"
    fi
    echo "$have${missing:+; left out: $missing}" > "$WORK/backends.txt"
    echo "$have"
}

export -f install_wheels environment
export PY WHEELS WORK SITE

if [ "$STUB" = 1 ]; then  # toy sizes on the CPU: rehearses every part, the deadline and the report

    PHOTOS=(16 0.25 40)
    MODEL=(model.ngf=8 model.ndf=8 model.num_downs=5 data.image_size=32 data.load_size=40 train.batch_size=4
           data.workers=1 train.device=cpu)
    LOG_EVERY=2
else

    PHOTOS=(256 1.0 286)  # 256 COCO-sized JPEGs, shards at the pix2pix load size
    MODEL=(model.ngf=64 model.ndf=64 model.num_downs=8 data.image_size=256 data.load_size=286
           train.batch_size=64 data.workers=8 train.device=cuda)
    LOG_EVERY=10
fi
SHARDS=$WORK/shards
TRAIN=(train run.out_dir="$WORK/runs" run.seed=0 task.name=colorize data.source="$SHARDS" data.backend=wds
       "${MODEL[@]}" train.max_steps=$STEPS train.log_every=$LOG_EVERY train.eval_every=0 train.sample_every=0
       train.ckpt_every=0 train.precision=bf16 train.channels_last=true)
PYTEST=("$PY" -m pytest tests/test_gpu.py -v -p no:cacheprovider -o addopts= -rs --timeout 120)

"$PY" - "$WORK/check.json" "$BUDGET" "$STUB" "$STEPS" "$WHEELS" "$SCALE" "$OUT" "${PLAN[@]}" <<'EOF'
import datetime, json, os, sys
out, budget, stub, steps, wheels, scale, folder, *plan = sys.argv[1:]
json.dump({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "budget_s": int(budget), "report_s": 20, "stub": stub == "1", "train_steps": int(steps),
           "wheels": sorted(os.listdir(wheels)), "out": folder, "work": os.path.dirname(out),
           "plan": [[p.split(":")[0], round(int(p.split(":")[1]) * float(scale), 1)] for p in plan]},
          open(out, "w"), indent=2)
EOF
report 20   # a verdict from the first second: every part "did not finish"

part install install_wheels
part environment environment
part shards "$PY" -c "import sys; from pathlib import Path; from p2p.bench.photos import build_shards; \
print(build_shards(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))" \
    "$WORK" "${PHOTOS[@]}"
part train-eager "$PY" -m p2p "${TRAIN[@]}" run.name=eager
part train-fast "$PY" -m p2p "${TRAIN[@]}" run.name=fast train.cuda_graphs=true train.compile=true
part pytest "${PYTEST[@]}" -m "gpu and not slow" --junitxml "$WORK/pytest.xml"
[ "$STUB" = 1 ] && echo "wds (stub)" > "$WORK/backends.txt"
suite_part() {  # LINE (name, seconds, flags): p2p bench NAME FLAGS --json WORK/NAME.json
    local name flags word words args=()
    IFS=$'\t' read -r name _ flags <<< "$1"
    read -r -a words <<< "$flags"
    for word in "${words[@]}"; do
        word=${word//\{shards\}/$SHARDS}
        [[ $word == *"{backends}"* ]] && word=${word//\{backends\}/$(backends)}
        args+=("$word")
    done
    part "$name" "$PY" -m p2p bench "$name" "${args[@]}" --json "$WORK/$name.json"
}
for line in "${SUITE_PARTS[@]}"; do suite_part "$line"; done
part pytest-trainings "${PYTEST[@]}" -m "gpu and slow" --junitxml "$WORK/pytest-trainings.xml"
for line in "${LAST_PARTS[@]}"; do suite_part "$line"; done

# the final report: after the deadline, with its own limit, whatever the parts did
report "$REPORT_S"
rc=$?
cat "$OUT/summary.md"
tail -n 1 "$WORK/logs/report.log"
echo "gpu-check: $(elapsed "$T0") s in all; results in $OUT (work files in $WORK)"
exit $rc
