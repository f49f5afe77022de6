#!/usr/bin/env bash
# The GPU check of the speed issue in one command (about 8-9 minutes on an H100 with its first compiles):
# the loop table with the fastest settings, GPU packing with them, then the same-numbers check.
#   OUT=/some/folder bash benchmarks/gpu_check.sh
# Each part has its own time limit and writes its output under $OUT as it goes, so a part that runs out of
# time still leaves what it printed. Set the limits with LOOPS_S, PACKING_S, SAME_S (seconds).
set -u
OUT=${OUT:-/tmp}
export PYTHONPATH=.
FAST1="--set stage1.channels_last=true --set stage1.precision=bf16 --set stage1.compile=true --set stage1.compile_mode=reduce-overhead"
FAST2="--set stage2.channels_last=true --set stage2.precision=bf16 --set stage2.compile=true --set stage2.compile_mode=reduce-overhead"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date +"%T loops"; timeout "${LOOPS_S:-230}" python3 -m benchmarks.bench_loops --device cuda --batches 40 --repeats 3 $FAST1 $FAST2 \
    --json "$OUT/loops.json" 2>&1 | grep -v Warning | tee "$OUT/loops.txt"
date +"%T packing"; timeout "${PACKING_S:-200}" python3 -m benchmarks.gpu_packing --loops-json "$OUT/loops.json" --window 12 \
    --counts 1 2 4 8 $FAST1 2>&1 | tee "$OUT/packing.txt"
date +"%T same numbers"; timeout "${SAME_S:-70}" python3 -m benchmarks.same_numbers --device cuda $FAST1 $FAST2 2>&1 | tee "$OUT/same_numbers.txt"
date +"%T end"
