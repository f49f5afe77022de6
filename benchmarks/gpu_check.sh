#!/usr/bin/env bash
# The GPU check of the speed issue in one command (about 8-9 minutes on an H100 with its first compiles):
# the loop table with the paper grid's settings, GPU packing with them, then the same-numbers check.
#   OUT=/some/folder bash benchmarks/gpu_check.sh
# Each part has its own time limit (LOOPS_S, PACKING_S, SAME_S seconds) and writes its output under $OUT as
# it goes, so a part that runs out of time still leaves what it printed.
source "$(dirname "$0")/gpu_common.sh"
step "${LOOPS_S:-230}" loops.txt python3 -m benchmarks.bench_loops --device cuda --batches 40 --repeats 3 \
    "${GRID1[@]}" "${GRID2[@]}" --json "$OUT/loops.json"
step "${PACKING_S:-200}" packing.txt python3 -m benchmarks.gpu_packing --loops-json "$OUT/loops.json" --window 12 \
    --counts 1 2 4 8 "${GRID1[@]}"
step "${SAME_S:-70}" same_numbers.txt python3 -m benchmarks.same_numbers --device cuda "${GRID1[@]}" "${GRID2[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
