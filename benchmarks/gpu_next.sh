#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid trains with graph_step and fused_sgd and packs 4 trials per GPU (the H100 outputs of
# 2026-11-27, made by this script's previous parts; each output file starts with the command that made it).
# Packing is the target still short (1.66x from 4 processes under MPS, 3x asked), so it comes first:
#   1. seeds packed into one model (`pack_seeds`, train_stage1_seeds) with the paper grid's stage-1 settings:
#      1, 3 (the paper grid's seeds per cell) and 8 seeds, whole steady epochs, aggregate images/s
#   2. processes each packing 3 seeds, under MPS (1, 2, 4 processes): what the paper grid would run with
#      pack_seeds: 3 and gpus 1/k; compare the aggregate with one process of one seed (27,100 images/s,
#      h100_packing_mps_graph_step_fused.txt)
#   3. packed seeds against each seed alone on the GPU (records side by side, bf16: within rounding)
#   4. process packing of stage 2 under MPS (with_mps.sh), 1, 2, 4, 8 processes with the paper grid's
#      stage-2 settings: stage 2 is two thirds of the grid's time, and its packing gain is assumed
#   5. the same-numbers check of compile_step in both stages with the paper grid's settings
#   6. steady stage-1 epochs with compile_step, then 7. without (the paper grid's settings, same call)
#   8. the same-numbers check of LDAM-DRW with the paper grid's stage-1 settings
#   Each run prints into a file of its own under $OUT (grid_estimate.py reads one run per file), 8 files at
#   most (what a device call brings back). Then the grid estimate from the steady runs (printed).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
COMPILE_STEP=(--set stage1.compile_step=true --set stage2.compile_step=true)
STEADY1=(--device cuda --epochs 4 --stages 1 "${GRID1[@]}" --set stage1.warmup_epochs=0)
step 150 packed_stage1.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 8 --epochs 3 "${GRID1[@]}"
step 170 packing_seeds3_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --seeds 3 \
    --counts 1 2 4 --window 10 --threads 2 "${GRID1[@]}"
step 100 packed_stage1_check.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 3 --epochs 2 \
    --fraction 0.2 --check "${GRID1[@]}"
step 240 packing_stage2_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 2 4 8 --window 10 --threads 2 "${GRID2[@]}"
step 110 same_numbers_compile_step.txt python3 -m benchmarks.same_numbers --device cuda "${GRID1[@]}" \
    "${GRID2[@]}" "${COMPILE_STEP[@]}"
step 70 steady_stage1_compile_step.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}" \
    --set stage1.compile_step=true
step 70 steady_stage1.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}"
step 90 same_numbers_ldam_drw.txt python3 -m benchmarks.same_numbers --device cuda --method ldam_drw "${GRID1[@]}"
# The paper grid's estimate from the stage-1 steady runs and the stage-2 one of 2026-11-27 (printed, not a
# file: 8 files at most come back).
for s1 in steady_stage1_compile_step steady_stage1; do
    if [[ -s $OUT/$s1.txt ]]; then
        echo "grid estimate from $s1 + h100_steady_stage2_graph_step_fused (G 1.66, 4 trials under MPS):"
        python3 -m benchmarks.grid_estimate "$OUT/$s1.txt" results/benchmarks/h100_steady_stage2_graph_step_fused.txt \
            --gain 1.66 2>&1 | tail -3
    fi
done
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
