#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid packs 6 units per trial, two trials per GPU (experiments/paper_cifar_lt.yaml), from the H100
# call of 2026-11-27 19:05 that this script's previous version made (results/benchmarks/
# h100_packed_stage1_graph_step.txt and the files beside it). The 3x packing target is still short. That
# call's stage-1 packs ran at warm-up learning rates, so graph_step recorded its step anew every epoch;
# packed_stage1 and gpu_packing now train stage 1 at one rate, as a run's steady epochs do.
#   1. stage-1 packs of 3 and 8 seeds with the paper grid's settings and with compile_step added (inductor's
#      fused kernels inside graph_step's recorded step), each against 1 seed with the same settings
#   2. stage 2 under MPS, processes each packing 6 units (a paper-grid cell's stage 2: 3 seeds in both DRO-LT
#      modes, timed as 6 seeds of one mode, the same work), 1 and 2 processes: the grid's two trials per GPU
#   3. one stage-2 unit alone under MPS, the baseline of 2 in the same call
#   4. stage-1 packs of 3 and 8 without graph_step and fused_sgd, against 1 seed without them
#   Each run prints into a file of its own under $OUT, 8 files at most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 100 packed_stage1.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 "${GRID1[@]}"
step 160 packed_stage1_compile_step.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 \
    "${GRID1[@]}" --set stage1.compile_step=true
step 260 packing_stage2_seeds6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --seeds 6 --counts 1 2 --window 40 --threads 2 "${GRID2[@]}"
step 90 packing_stage2_one_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 --window 15 --threads 2 "${GRID2[@]}"
step 100 packed_stage1_no_graph_step.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 \
    "${FAST1[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
