#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh):
#   1. seeds packed into one model (packed_seeds): aggregate training-step throughput of 1, 2, 4, 8 seeds as
#      one grouped-convolution model, the whole step in one CUDA graph, then 1 and 4 seeds under
#      torch.compile reduce-overhead (the current per-trial setting): can in-process packing reach 3x where
#      process packing stops at 1.36x?
#   2. reference-style epochs at (nearly) full size, timed instead of extrapolated from shortened ones:
#      stage 2 over 49,920 of the 50,000-image pass, stage 1 over 12,288 of the 12,406 images
#   3. steady stage-2 epochs: fast settings alone, then + compile_loss and augment_batches=32
#   4. a steady stage-2 epoch profiled with the fast settings (profile_epoch: GPU busy time against the
#      epoch's time, launches, syncs, top ops)
#   5. steady stage-1 epochs with the fast settings (the first epoch shows the warm-up now that only the
#      batch and evaluation sizes are compiled)
#   6. a steady stage-1 epoch profiled
#   7. the same-numbers check of the fast settings with compile_loss (and the eager short batches on a GPU)
#   OUT=/some/folder bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 60 packed_seeds.txt python3 -m benchmarks.packed_seeds --device cuda --channels-last --precision bf16 \
    --modes graph
step 100 packed_seeds.txt python3 -m benchmarks.packed_seeds --device cuda --channels-last --precision bf16 \
    --modes compile --seeds 1 4
step 100 reference_full.txt python3 -m benchmarks.bench_loops --device cuda --loops ref --stages 2 --batches 390 \
    --repeats 2 --warmup 0
step 40 reference_full.txt python3 -m benchmarks.bench_loops --device cuda --loops ref --stages 1 --batches 96 \
    --repeats 3 --warmup 0
for extra in "" "stage2.compile_loss=true stage2.augment_batches=32"; do
    sets=()
    for kv in $extra; do sets+=(--set "$kv"); done
    step 80 steady_stage2.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 \
        "${FAST2[@]}" "${sets[@]}"
done
step 90 profile_stage2.txt python3 -m benchmarks.profile_epoch --device cuda --stage 2 --fraction 0.3 "${FAST2[@]}"
step 80 steady_stage1.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 4 --stages 1 "${FAST1[@]}"
step 60 profile_stage1.txt python3 -m benchmarks.profile_epoch --device cuda --stage 1 --fraction 0.5 "${FAST1[@]}"
step 70 same_numbers.txt python3 -m benchmarks.same_numbers --device cuda "${FAST1[@]}" "${FAST2[@]}" \
    --set stage2.compile_loss=true
echo "$(date +%T) end after ${SECONDS} s"
exit "$WORST"
