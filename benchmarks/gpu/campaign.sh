#!/usr/bin/env bash
# The whole GPU check as one command (one call of under 8 minutes on an H200).
#
#   bash benchmarks/gpu/campaign.sh OUT             # on the GPU machine
#   bash benchmarks/gpu/campaign.sh --dry-run OUT   # on any CPU machine (CI runs it)
#
# Steps, each under its own time budget (seconds; the whole run is capped at CAMPAIGN_BUDGET_S,
# default 460, and a step gets no more than what is left). A failing or timed-out step is
# reported in OUT/steps.tsv and the rest still runs. Timeouts send SIGINT first, so pytest
# still writes its JSON / XML for what finished.
#   env        device, driver, versions                                  (into campaign.log)
#   install    pip install --no-deps --no-build-isolation -e . (builds the C++/CUDA extension;
#              on failure the source tree is used through PYTHONPATH)
#   roofline   copy bandwidth and bf16 matmul rate, measured here      -> roofline.json
#   gpu-tests  pytest -m gpu tests (parity at real sizes, determinism)  -> gpu-tests.xml
#   bench-*    every benchmark file with --benchmark-json, conv3d last  -> benchmarks.json
#   ncu        Nsight Compute on the conv3d forward at a Cosmos shape   -> ncu.txt
#   summary    one-screen table: ratios, percent of the measured ceilings -> summary.txt
# CAMPAIGN_SKIP="install ncu" skips the named steps (a rerun on a machine that has them done).
# OUT ends with at most 8 files: campaign.log steps.tsv summary.txt roofline.json
# benchmarks.json gpu-tests.xml ncu.txt (anything else is packed into extra.tar.gz).
#
# --dry-run checks every import and tool, lists each step with its budget, and runs the CPU side
# of the campaign's own code (roofline and the conv3d profiling driver on CPU, collection of the
# GPU tests and of every benchmark, one tiny benchmark run into a real pytest-benchmark JSON, the
# summary and the packing) so that a typo cannot waste GPU minutes.
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu/campaign.sh [--dry-run] OUT" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-python3}
BUDGET=${CAMPAIGN_BUDGET_S:-460}
RESERVE=15   # kept back for the summary and the packing
START=$(date +%s)
LOG="$OUT/campaign.log"
STEPS="$OUT/steps.tsv"
: > "$LOG"
: > "$STEPS"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}

# name budget command: every step of the campaign, in order
STEP_NAMES=(env install roofline gpu-tests bench-flow_matching bench-disparity bench-attention
            bench-others bench-causal_conv3d ncu)
declare -A BUDGETS=([env]=10 [install]=110 [roofline]=25 [gpu-tests]=70 [bench-flow_matching]=25
                    [bench-disparity]=25 [bench-attention]=35 [bench-others]=25
                    [bench-causal_conv3d]=85 [ncu]=45)

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME COMMAND: run COMMAND under min(budget, time left); record status and seconds.
step() {
    local name=$1 cmd=$2 budget=${BUDGETS[$1]}
    if [[ " ${CAMPAIGN_SKIP:-} " == *" $name "* ]]; then
        printf '%s\tskipped\t0\t%s\n' "$name" "$budget" >> "$STEPS"
        echo "== $name: skipped (CAMPAIGN_SKIP)" | tee -a "$LOG"
        return
    fi
    local left=$(( BUDGET - RESERVE - $(elapsed) ))
    (( budget > left )) && budget=$left
    if (( budget < 5 )); then
        printf '%s\tskipped\t0\t%s\n' "$name" "${BUDGETS[$name]}" >> "$STEPS"
        echo "== $name: skipped (out of time)" | tee -a "$LOG"
        return
    fi
    echo "== $name (budget ${budget} s): $cmd" | tee -a "$LOG"
    local t0=$(date +%s) rc
    timeout -s INT -k 10 "$budget" bash -c "$cmd" >> "$LOG" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - t0 )) status=ok
    if (( rc == 124 || rc == 137 )); then status=timeout; elif (( rc != 0 )); then status="rc=$rc"; fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$budget" >> "$STEPS"
    echo "== $name: $status in ${secs} s" | tee -a "$LOG"
}

BENCH_ARGS="-q -p no:cacheprovider --continue-on-collection-errors --benchmark-only"
bench_cmd() {  # bench_cmd NAME FILES...
    local name=$1; shift
    echo "$PY -m pytest $* $BENCH_ARGS --benchmark-json '$OUT/bench-$name.json'"
}
OTHER_BENCH=$(ls benchmarks/test_bench_*.py | grep -v -e flow_matching -e disparity -e attention \
              -e causal_conv3d | tr '\n' ' ')

declare -A CMDS=(
    [env]="nvidia-smi || true; $PY -c 'import sys, torch, triton; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__); print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'; git log -1 --oneline || true"
    [install]="$PY -m pip install --no-deps --no-build-isolation -e ."
    [roofline]="$PY benchmarks/gpu/roofline.py '$OUT/roofline.json'"
    [gpu-tests]="$PY -m pytest tests -m gpu -q -p no:cacheprovider --continue-on-collection-errors --junitxml='$OUT/gpu-tests.xml'"
    [bench-flow_matching]="$(bench_cmd flow_matching benchmarks/test_bench_flow_matching.py)"
    [bench-disparity]="$(bench_cmd disparity benchmarks/test_bench_disparity.py)"
    [bench-attention]="$(bench_cmd attention benchmarks/test_bench_attention.py)"
    [bench-others]="$(bench_cmd others $OTHER_BENCH)"
    [bench-causal_conv3d]="$(bench_cmd causal_conv3d benchmarks/test_bench_causal_conv3d.py)"
    [ncu]="command -v ncu >/dev/null || { echo 'ncu not found'; exit 3; }; ncu --clock-control none --profile-from-start off --target-processes all --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats $PY benchmarks/gpu/conv3d_profile.py > '$OUT/ncu.txt' 2>&1; rc=\$?; tail -5 '$OUT/ncu.txt'; exit \$rc"
)

pack() {
    # benchmarks.json: every bench-*.json in one document; anything beyond the 8 files -> tar
    $PY - "$OUT" <<'EOF' >> "$LOG" 2>&1
import glob, json, os, sys
out = sys.argv[1]
parts = sorted(glob.glob(os.path.join(out, "bench-*.json")))
merged = {}
for p in parts:
    try:
        merged[os.path.basename(p)] = json.load(open(p))
    except ValueError as exc:
        merged[os.path.basename(p)] = {"error": str(exc)}
if parts:
    json.dump(merged, open(os.path.join(out, "benchmarks.json"), "w"))
    for p in parts:
        os.remove(p)
print(f"pack: {len(parts)} benchmark JSON files -> benchmarks.json")
EOF
    local keep="campaign.log steps.tsv summary.txt roofline.json benchmarks.json gpu-tests.xml ncu.txt"
    local extra=()
    for f in $(ls -A "$OUT"); do
        case " $keep " in *" $f "*) ;; *) [ "$f" = extra.tar.gz ] || extra+=("$f") ;; esac
    done
    if (( ${#extra[@]} )); then
        tar -C "$OUT" -czf "$OUT/extra.tar.gz" "${extra[@]}" && (cd "$OUT" && rm -rf "${extra[@]}")
    fi
    echo "OUT holds $(ls -A "$OUT" | wc -l) files: $(ls -A "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
}

if (( DRY )); then
    echo "campaign dry run -> $OUT (budget ${BUDGET} s)" | tee -a "$LOG"
    fail=0
    check() {  # check WHAT COMMAND: a dry-run check; any failure fails the dry run
        echo "-- $1" | tee -a "$LOG"
        if ! bash -c "$2" >> "$LOG" 2>&1; then echo "FAILED: $1" | tee -a "$LOG"; fail=1; fi
    }
    total=0
    printf '%-22s %7s  %s\n' step budget command | tee -a "$LOG"
    for s in "${STEP_NAMES[@]}"; do
        printf '%-22s %6ss  %s\n' "$s" "${BUDGETS[$s]}" "${CMDS[$s]:0:110}" | tee -a "$LOG"
        total=$(( total + BUDGETS[$s] ))
        printf '%s\tplanned\t0\t%s\n' "$s" "${BUDGETS[$s]}" >> "$STEPS"
    done
    echo "sum of step budgets ${total} s; the run is capped at ${BUDGET} s (+${RESERVE} s reserve kept inside)" | tee -a "$LOG"
    if (( BUDGET > 470 )); then echo "FAILED: budget over 470 s" | tee -a "$LOG"; fail=1; fi
    check "tools: timeout, tar, git" "command -v timeout && command -v tar && command -v git"
    check "optional tools (ncu, nvidia-smi): reported only" "command -v ncu || echo 'no ncu here'; command -v nvidia-smi || echo 'no nvidia-smi here'"
    check "imports" "TRITON_INTERPRET=1 $PY -c 'import torch, triton, numpy, pytest, pytest_benchmark; import rgbd_kernels, rgbd_kernels.backend, rgbd_kernels._triton.causal_conv3d, rgbd_kernels._triton.flow_matching, rgbd_kernels._triton.disparity; import benchmarks.gpu.roofline, benchmarks.gpu.summary, benchmarks.gpu.conv3d_profile, benchmarks.gpu.aot_compile; print(\"imports ok: torch\", torch.__version__, \"triton\", triton.__version__)'"
    check "roofline (CPU, small)" "$PY benchmarks/gpu/roofline.py --dry-run '$OUT/roofline.json'"
    check "conv3d profiling driver (CPU, interpreter, small)" "$PY benchmarks/gpu/conv3d_profile.py --dry-run"
    check "GPU tests collect (pytest -m gpu)" "TRITON_INTERPRET=1 $PY -m pytest tests -m gpu --collect-only -q -p no:cacheprovider > '$OUT/gpu-collect.txt'; rc=\$?; tail -2 '$OUT/gpu-collect.txt'; n=\$(grep -c '::' '$OUT/gpu-collect.txt'); rm -f '$OUT/gpu-collect.txt'; echo \"\$n GPU tests\"; test \$rc = 0 -a \"\$n\" -gt 0"
    check "every benchmark collects" "TRITON_INTERPRET=1 $PY -m pytest benchmarks --collect-only -q -p no:cacheprovider | tail -2"
    check "one tiny benchmark into a real pytest-benchmark JSON" "TRITON_INTERPRET=1 $PY -m pytest benchmarks/test_bench_disparity.py -k test_depth_to_disparity -q -p no:cacheprovider --benchmark-only --benchmark-min-rounds=1 --benchmark-max-time=0.001 --benchmark-warmup=off --benchmark-json '$OUT/bench-dry.json'"
    check "summary" "$PY benchmarks/gpu/summary.py '$OUT'"
    pack
    check "at most 8 files in OUT" "test \$(ls -A '$OUT' | wc -l) -le 8"
    echo "campaign dry run: $([ $fail = 0 ] && echo OK || echo FAILED) in $(elapsed) s" | tee -a "$LOG"
    exit $fail
fi

echo "GPU campaign -> $OUT (budget ${BUDGET} s)" | tee -a "$LOG"
for s in "${STEP_NAMES[@]}"; do
    step "$s" "${CMDS[$s]}"
    if [ "$s" = install ] && ! $PY -c "import rgbd_kernels._C" >/dev/null 2>&1; then
        echo "install: the compiled extension is not importable; Python and Triton paths still run" | tee -a "$LOG"
    fi
done
$PY benchmarks/gpu/summary.py "$OUT" 2>&1 | tee -a "$LOG"
pack
echo "campaign done in $(elapsed) s" | tee -a "$LOG"
