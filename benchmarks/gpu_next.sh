#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), and so is every part after it, so that a second call goes on
# where the first stopped (SKIP=<parts already run>).
# The paper grid packs 6 units per trial, two trials per GPU (experiments/paper_cifar_lt.yaml): a cell's stage 1
# (3 seeds of CE and of LDAM-DRW, one pack since 2026-11-28) and its stage 2 (3 seeds in both DRO-LT modes). The
# 3x packing target is still short: the H100 calls of 2026-11-27 measured 1.78x for two 3-seed stage-1 packs
# under MPS and 1.80x for one 6-unit stage-2 pack (two calls); 3.31x for an 8-seed stage-1 pack without
# graph_step, 2.61x with it (every epoch at a new warm-up rate).
#   The packs' step runs three ways, each against one unit with the same settings in the same part: the packing
#   gain is the best pack's aggregate over the best single unit's. A pack's kernels are K times wider and, under
#   graph_step, still the eager model's unfused ones (BatchNorm and ReLU each a pass over memory); inductor's
#   fused kernels (compile_step inside the recorded step, or compile without graph_step: the 3.31x) may carry a
#   wide pack further than they carry one unit.
#   1. stage-1 packs of 3 and 6 units, CE and LDAM-DRW in turn (the grid's stage-1 pack), against 1 unit, with
#      the paper grid's settings at one learning rate
#   2. the pack of 6 and 1 unit with compile_step (inductor's fused kernels inside graph_step's step)
#   3. the pack of 6 and 1 unit with compile reduce-overhead and no graph_step (the settings of the 3.31x)
#   4. stage-2 packs of 6 (a paper-grid cell: 3 seeds in both DRO-LT modes) and 18 units (pack_seeds: 18, a
#      dataset's three rhos in one pack; timed at one rho: the three rhos' NCM passes, padded to the largest
#      rho's training set, add a few percent), against 1 unit in the same process; half the data, so that
#      three cold compiles fit
#   5. the stage-2 pack of 6 and 1 unit with compile_step
#   6. stage 1 under MPS, 1 and 2 processes each packing CE and LDAM-DRW's 6 units: the grid's two trials per GPU
#   7. stage 2 under MPS, 1 and 2 processes each packing 6 units: the grid's two trials per GPU
#   8. one stage-2 unit alone under MPS, the baseline of 7 in the same call
#   Each part prints into a file of its own under $OUT, 8 files at most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 100 packed_stage1_mixed.txt python3 -m benchmarks.packed_epochs --stage 1 --mixed --device cuda --counts 3 6 \
    "${GRID1[@]}"
step 160 packed_stage1_mixed_compile_step.txt python3 -m benchmarks.packed_epochs --stage 1 --mixed --device cuda \
    --counts 6 "${GRID1[@]}" --set stage1.compile_step=true
step 100 packed_stage1_mixed_no_graph_step.txt python3 -m benchmarks.packed_epochs --stage 1 --mixed --device cuda \
    --counts 6 "${FAST1[@]}"
step 240 packed_stage2.txt python3 -m benchmarks.packed_epochs --stage 2 --device cuda --counts 6 18 --fraction 0.5 \
    "${GRID2[@]}"
step 200 packed_stage2_compile_step.txt python3 -m benchmarks.packed_epochs --stage 2 --device cuda --counts 6 \
    --fraction 0.5 "${GRID2[@]}" --set stage2.compile_step=true
step 150 packing_stage1_mixed6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --mixed \
    --seeds 6 --counts 1 2 --window 20 --threads 2 "${GRID1[@]}"
step 260 packing_stage2_seeds6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --seeds 6 --counts 1 2 --window 40 --threads 2 "${GRID2[@]}"
step 90 packing_stage2_one_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 --window 15 --threads 2 "${GRID2[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
