#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid packs 6 units per trial, two trials per GPU (experiments/paper_cifar_lt.yaml), from the H100
# call of 2026-11-27 19:05 that this script's previous version made: stage-1 packs 1.63x at 3 seeds, 2.61x
# at 8; a stage-2 pack of 6 1.80x (results/benchmarks/h100_packed_stage1_graph_step.txt and the files beside
# it). The 3x packing target is still short, and an 8-seed pack trained 3.31x before graph_step and fused_sgd
# (h100_packed_stage1.txt): graph_step records the eager model's kernels, compile_step inductor's fused ones.
#   1. stage-1 packs of 3 and 8 with compile_step added to the paper grid's settings, against 1 seed (with it)
#   2. stage 2 under MPS, processes each packing 6 units (a paper-grid cell's stage 2: 3 seeds in both DRO-LT
#      modes, timed as 6 seeds of one mode, the same work), 1 and 2 processes: the grid's two trials per GPU
#   3. one stage-2 unit alone, the baseline of 2 in the same call
#   4. stage-1 packs of 3 and 8 without graph_step and fused_sgd, against 1 seed without them
#   5. a stage-2 pack of 6 with compile_step, one process
#   Each run prints into a file of its own under $OUT, 8 files at most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 110 packed_stage1_compile_step.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 \
    "${GRID1[@]}" --set stage1.compile_step=true
step 280 packing_stage2_seeds6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --seeds 6 --counts 1 2 --window 40 --threads 2 "${GRID2[@]}"
step 90 packing_stage2_one.txt python3 -m benchmarks.gpu_packing --stage 2 --counts 1 --window 15 --threads 2 \
    "${GRID2[@]}"
step 100 packed_stage1_no_graph_step.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 \
    "${FAST1[@]}"
step 150 packing_stage2_seeds6_compile_step.txt python3 -m benchmarks.gpu_packing --stage 2 --seeds 6 --counts 1 \
    --window 25 --threads 2 "${GRID2[@]}" --set stage2.compile_step=true
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
