#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid trains with graph_step and fused_sgd and packs 4 trials per GPU (the H100 outputs of
# 2026-11-27, made by this script's previous parts; each output file starts with the command that made it).
# Packing is the target still short (1.66x from 4 processes under MPS, 3x asked), so it comes first:
#   1. seeds packed into one model (`pack_seeds`, train_stage1_seeds) with the paper grid's stage-1 settings:
#      1, 3 (the paper grid's seeds per cell) and 8 seeds, whole steady epochs, aggregate images/s
#   2. stage 2 (two thirds of the grid's time) under MPS, processes each packing 6 units (1, 2 processes; a
#      cell's 3 seeds in both DRO-LT modes pack together, timed here as 6 seeds of one mode, the same work),
#      then 3. one seed per process (1, 2, 4) as the baseline of the same call: what pack_seeds: 6 gains there
#   4. stage 1 under MPS, processes each packing 3 seeds (1, 2, 4); compare the aggregate with one process of
#      one seed (27,100 images/s, h100_packing_mps_graph_step_fused.txt): 3x is 81,300
#   5. packed seeds against each seed alone on the GPU (records side by side, bf16: within rounding)
#   6. the same-numbers check of LDAM-DRW with the paper grid's stage-1 settings
#   Each run prints into a file of its own under $OUT (grid_estimate.py reads one run per file), 8 files at
#   most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 150 packed_stage1.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 "${GRID1[@]}"
step 180 packing_stage2_seeds6_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --seeds 6 --counts 1 2 --window 10 --threads 2 "${GRID2[@]}"
step 170 packing_stage2_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 2 4 --window 10 --threads 2 "${GRID2[@]}"
step 170 packing_seeds3_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --seeds 3 \
    --counts 1 2 4 --window 10 --threads 2 "${GRID1[@]}"
step 100 packed_stage1_check.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 --epochs 2 \
    --fraction 0.2 --check "${GRID1[@]}"
step 90 same_numbers_ldam_drw.txt python3 -m benchmarks.same_numbers --device cuda --method ldam_drw "${GRID1[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
