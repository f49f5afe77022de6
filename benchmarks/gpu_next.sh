#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid trains with graph_step and fused_sgd and packs 4 trials per GPU (the H100 outputs of
# 2026-11-27, made by this script's previous parts; each output file starts with the command that made it):
#   1. the same-numbers check of compile_step in both stages with the paper grid's settings: graph_step's
#      recorded step running the compiled model (inductor's fused kernels) instead of the eager one
#   2. steady stage-1 epochs with compile_step, then without (the paper grid's settings, same call): the
#      recorded step's GPU time is the eager model's (91% of the 0.43 s epoch busy), and compiled kernels
#      did the same work in less (the GPU busy 0.29 s of a 0.61 s epoch without graph_step)
#   3. steady stage-2 epochs with compile_step, then without
#   4. process packing of stage 2 under MPS (with_mps.sh), 1, 2, 4, 8 processes with the paper grid's
#      stage-2 settings: stage 2 is two thirds of the grid's time, and its packing gain is assumed
#   5. the same-numbers check of LDAM-DRW with the paper grid's stage-1 settings: its class re-weighting
#      starts in the third epoch, and the recorded training step must follow the new class weights
#   6. process packing of stage 1 without MPS (time-slicing), 1, 2, 4 processes with the paper grid's
#      settings: is 4 trials per GPU still right on a GPU without MPS?
#   Each run prints into a file of its own under $OUT (grid_estimate.py reads one run per file), 8 files at
#   most (what a device call brings back). Then the grid estimate from the steady runs (printed).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
COMPILE_STEP=(--set stage1.compile_step=true --set stage2.compile_step=true)
STEADY1=(--device cuda --epochs 4 --stages 1 "${GRID1[@]}" --set stage1.warmup_epochs=0)
STEADY2=(--device cuda --epochs 3 --stages 2 "${GRID2[@]}")
step 110 same_numbers_compile_step.txt python3 -m benchmarks.same_numbers --device cuda "${GRID1[@]}" \
    "${GRID2[@]}" "${COMPILE_STEP[@]}"
step 70 steady_stage1_compile_step.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}" \
    --set stage1.compile_step=true
step 70 steady_stage1.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}"
step 90 steady_stage2_compile_step.txt python3 -m benchmarks.steady_epochs "${STEADY2[@]}" \
    --set stage2.compile_step=true
step 90 steady_stage2.txt python3 -m benchmarks.steady_epochs "${STEADY2[@]}"
step 240 packing_stage2_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 2 4 8 --window 10 --threads 2 "${GRID2[@]}"
step 90 same_numbers_ldam_drw.txt python3 -m benchmarks.same_numbers --device cuda --method ldam_drw "${GRID1[@]}"
step 120 packing_stage1_no_mps.txt python3 -m benchmarks.gpu_packing --counts 1 2 4 --window 10 --threads 2 \
    "${GRID1[@]}"
# The paper grid's estimate from whichever steady runs finished (printed, not a file: 8 files at most come back).
for s1 in steady_stage1_compile_step steady_stage1; do
    for s2 in steady_stage2_compile_step steady_stage2; do
        if [[ -s $OUT/$s1.txt && -s $OUT/$s2.txt ]]; then
            echo "grid estimate from $s1 + $s2 (G 1.66, stage-1 packing at 4 trials under MPS):"
            python3 -m benchmarks.grid_estimate "$OUT/$s1.txt" "$OUT/$s2.txt" --gain 1.66 2>&1 | tail -3
        fi
    done
done
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
