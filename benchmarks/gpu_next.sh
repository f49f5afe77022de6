#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early.
# The paper grid now trains with graph_step and fused_sgd, and packs 4 trials per GPU; what its choice rests
# on that no GPU has checked yet:
#   1. the same-numbers check of LDAM-DRW with the paper grid's stage-1 settings: its class re-weighting
#      starts in the third epoch, and the recorded training step must follow the new class weights
#   2. process packing of stage 2 under MPS (with_mps.sh), 1, 2, 4, 8 processes with the paper grid's
#      stage-2 settings: stage 2 is two thirds of the grid's time, and its packing gain is assumed
#   3. process packing of stage 1 without MPS (time-slicing), 1, 2, 4 processes with the paper grid's
#      settings: is 4 trials per GPU still right on a GPU without MPS?
#   4. steady stage-1 and stage-2 epochs with an empty compile cache: the warm-up a machine's first unit
#      of each kind pays with graph_step
#   Each run prints into a file of its own under $OUT, 8 files at most (what a device call brings back).
#   The H100 outputs of 2026-11-27 (results/benchmarks/h100_*.txt) came from this script's previous parts;
#   each file starts with the command that made it.
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
GRID1=("${FAST1[@]}" --set stage1.graph_step=true --set stage1.fused_sgd=true)
GRID2=("${FAST2[@]}" --set stage2.compile_loss=true --set stage2.augment_batches=32 --set stage2.graph_augment=true
       --set stage2.graph_step=true --set stage2.fused_sgd=true)
step 90 same_numbers_ldam_drw.txt python3 -m benchmarks.same_numbers --device cuda --method ldam_drw "${GRID1[@]}"
step 240 packing_stage2_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --stage 2 \
    --counts 1 2 4 8 --window 10 --threads 2 "${GRID2[@]}"
step 120 packing_stage1_no_mps.txt python3 -m benchmarks.gpu_packing --counts 1 2 4 --window 10 --threads 2 \
    "${GRID1[@]}"
step 70 steady_stage1_cold.txt env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python3 -m benchmarks.steady_epochs \
    --device cuda --epochs 3 --stages 1 "${GRID1[@]}" --set stage1.warmup_epochs=0
step 90 steady_stage2_cold.txt env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python3 -m benchmarks.steady_epochs \
    --device cuda --epochs 3 --stages 2 "${GRID2[@]}"
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
