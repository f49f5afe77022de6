#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early:
#   1. the same-numbers check of graph_step (the whole training step replayed from one CUDA graph) and
#      fused_sgd in both stages, with stage 2's compile_loss, augment_batches=32 and graph_augment, beside
#      the fast settings: records within the stated tolerances after 3 stage-1 epochs (a learning-rate
#      change, short batches) and 2 stage-2 feature epochs (new centroids)
#   2. steady stage-1 epochs with the fast settings + graph_step + fused_sgd, then neither (the baseline,
#      same call), past the learning-rate warm-up (each new rate records the step anew, 7 times in a
#      200-epoch run): does taking the optimizer's host time away (1.8 ms a step, profiled) take stage 1
#      past 8x the reference-style loop (3.99 s)?
#   3. process packing of stage 1 under MPS (with_mps.sh): 1, 2, 4, 8 processes whose kernels run side by
#      side instead of taking turns (1.36x at most without MPS). Ray's fractional GPUs with no code change
#   4. steady stage-2 epochs with the paper grid's stage-2 settings (2.54 s in an earlier call, before the
#      centroid bank drew a pass's augmentation at once), then with graph_step + fused_sgd added
#   5. steady stage-1 epochs with fused_sgd alone
#   6. a steady stage-1 epoch with graph_step and fused_sgd profiled
#   Each run prints into a file of its own under $OUT (grid_estimate.py reads one run per file), 8 files at
#   most (what a device call brings back).
#   OUT=/some/folder BUDGET_S=585 bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
PAPER2=("${FAST2[@]}" --set stage2.compile_loss=true --set stage2.augment_batches=32 --set stage2.graph_augment=true)
GRAPH_STEP=(--set stage1.graph_step=true --set stage2.graph_step=true)
FUSED=(--set stage1.fused_sgd=true --set stage2.fused_sgd=true)
STEADY1=(--device cuda --epochs 4 --stages 1 "${FAST1[@]}" --set stage1.warmup_epochs=0)
STEADY2=(--device cuda --epochs 3 --stages 2 "${PAPER2[@]}")
step 110 same_numbers.txt python3 -m benchmarks.same_numbers --device cuda "${FAST1[@]}" "${PAPER2[@]}" \
    "${GRAPH_STEP[@]}" "${FUSED[@]}"
step 70 steady_stage1_graph_step_fused.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}" \
    --set stage1.graph_step=true --set stage1.fused_sgd=true
step 70 steady_stage1.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}"
step 180 packing_mps.txt bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --counts 1 2 4 8 \
    --window 10 --threads 2 "${FAST1[@]}"
step 90 steady_stage2.txt python3 -m benchmarks.steady_epochs "${STEADY2[@]}"
step 90 steady_stage2_graph_step_fused.txt python3 -m benchmarks.steady_epochs "${STEADY2[@]}" \
    --set stage2.graph_step=true --set stage2.fused_sgd=true
step 70 steady_stage1_fused.txt python3 -m benchmarks.steady_epochs "${STEADY1[@]}" --set stage1.fused_sgd=true
step 60 profile_stage1.txt python3 -m benchmarks.profile_epoch --device cuda --stage 1 --fraction 0.5 "${FAST1[@]}" \
    --set stage1.warmup_epochs=0 --set stage1.graph_step=true --set stage1.fused_sgd=true
# The paper grid's estimate from whichever steady runs finished (printed, not a file: 8 files at most come back).
for s1 in steady_stage1_graph_step_fused steady_stage1; do
    for s2 in steady_stage2_graph_step_fused steady_stage2; do
        if [[ -s $OUT/$s1.txt && -s $OUT/$s2.txt ]]; then
            echo "grid estimate from $s1 + $s2 (G 1.35, the process-packing gain without MPS):"
            python3 -m benchmarks.grid_estimate "$OUT/$s1.txt" "$OUT/$s2.txt" --gain 1.35 2>&1 | tail -3
        fi
    done
done
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
