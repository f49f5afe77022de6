#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a step is skipped when fewer seconds
# than its limit are left of BUDGET_S (default 540, so the whole script fits one 10-minute device call):
#   1. a steady stage-2 epoch profiled with the paper grid's fast settings (profile_epoch: GPU busy time
#      against wall time, launches, syncs, top ops)
#   2. full-size stage-2 epochs of the three loops (bench_loops at the whole 50,000-image pass): the
#      reference-style epoch measured instead of extrapolated from a shortened one
#   3. steady stage-2 epochs: fast settings alone, + compile_loss, + compile_loss and augment_batches=32
#   4. a steady stage-1 epoch profiled
#   5. the same-numbers check of compile_loss
#   6. full-size stage-1 epochs of the three loops
#   OUT=/some/folder bash benchmarks/gpu_next.sh
set -u
OUT=${OUT:-/tmp}
BUDGET_S=${BUDGET_S:-540}
export PYTHONPATH=.
FAST1="--set stage1.channels_last=true --set stage1.precision=bf16 --set stage1.compile=true --set stage1.compile_mode=reduce-overhead"
FAST2="--set stage2.channels_last=true --set stage2.precision=bf16 --set stage2.compile=true --set stage2.compile_mode=reduce-overhead"

step() {  # step LIMIT_S OUTPUT_FILE COMMAND...: runs COMMAND for at most LIMIT_S if the budget leaves room
    local limit=$1 file=$2
    shift 2
    if (( SECONDS + limit > BUDGET_S )); then
        echo "$(date +%T) skipped, ${limit} s not left: $*"
        return
    fi
    echo "$(date +%T) $*"
    timeout "$limit" "$@" 2>&1 | grep -v Warning | tee -a "$OUT/$file"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step 90 profile_stage2.txt python3 -m benchmarks.profile_epoch --device cuda --stage 2 --fraction 0.3 $FAST2
step 150 loops_full_stage2.txt python3 -m benchmarks.bench_loops --device cuda --stages 2 --batches 390 \
    --repeats 1 --warmup 0 $FAST2
for extra in "" "--set stage2.compile_loss=true" "--set stage2.compile_loss=true --set stage2.augment_batches=32"; do
    step 90 steady_stage2.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 $FAST2 $extra
done
step 70 profile_stage1.txt python3 -m benchmarks.profile_epoch --device cuda --stage 1 --fraction 0.5 $FAST1
step 70 same_numbers_compile_loss.txt python3 -m benchmarks.same_numbers --device cuda --set stage2.compile_loss=true
step 90 loops_full_stage1.txt python3 -m benchmarks.bench_loops --device cuda --stages 1 --batches 96 \
    --repeats 1 --warmup 0 $FAST1
echo "$(date +%T) end after ${SECONDS} s"
