#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), and so is every part after it, so that a second call goes on
# where the first stopped (SKIP=<parts already run>).
# The paper grid packs 6 units per trial, two trials per GPU (experiments/paper_cifar_lt.yaml), from the H100
# call of 2026-11-27 19:05 (results/benchmarks/h100_packed_stage1_graph_step.txt and the files beside it). The
# 3x packing target is still short: 2.61x at 8 stage-1 seeds in that call, whose epochs all ran at warm-up
# learning rates (graph_step recorded its step anew every epoch), against 3.31x without graph_step in an
# earlier call. Stage 2, most of the grid's time, was measured packed at 6 units only (1.80x, two calls).
#   1. stage-1 packs of 3 and 8 seeds with the paper grid's settings at one learning rate, against 1 seed
#   2. stage-2 packs of 6 (a paper-grid cell: 3 seeds in both DRO-LT modes) and 18 units (pack_seeds: 18, a
#      dataset's three rhos in one pack; timed at one rho: the three rhos' NCM passes, padded to the largest
#      rho's training set, add a few percent), against 1 unit in the same process; half the data, so that
#      three cold compiles fit
#   3. part 1 with compile_step (inductor's fused kernels inside graph_step's recorded step)
#   4. stage 2 under MPS, 1 and 2 processes each packing 6 units: the grid's two trials per GPU
#   5. one stage-2 unit alone under MPS, the baseline of 4 in the same call
#   6. part 1 without graph_step and fused_sgd (the settings of the 3.31x)
#   Each part prints into a file of its own under $OUT, 8 files at most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 100 packed_stage1.txt python3 -m benchmarks.packed_epochs --stage 1 --device cuda --counts 3 8 "${GRID1[@]}"
step 240 packed_stage2.txt python3 -m benchmarks.packed_epochs --stage 2 --device cuda --counts 6 18 --fraction 0.5 \
    "${GRID2[@]}"
step 160 packed_stage1_compile_step.txt python3 -m benchmarks.packed_epochs --stage 1 --device cuda --counts 3 8 \
    "${GRID1[@]}" --set stage1.compile_step=true
step 260 packing_stage2_seeds6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --seeds 6 --counts 1 2 --window 40 --threads 2 "${GRID2[@]}"
step 90 packing_stage2_one_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 --window 15 --threads 2 "${GRID2[@]}"
step 100 packed_stage1_no_graph_step.txt python3 -m benchmarks.packed_epochs --stage 1 --device cuda --counts 3 8 \
    "${FAST1[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
