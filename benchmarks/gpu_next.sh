#!/usr/bin/env bash
# The next GPU measurement of the speed issue, most telling first; a part is skipped when fewer seconds than
# its limit are left of BUDGET_S (gpu_common.sh), so the later parts run only when earlier ones end early:
#   1. packed_stage1: whole stage-1 epochs of 4 seeds packed into one grouped-convolution model against 1,
#      with the fast settings: can in-process packing reach the 3x that process packing (1.36x) cannot?
#   2. graph_augment_check: the augmentation replayed from CUDA graphs gives the plain path's images bit for
#      bit, beside a model in CUDA graphs; its time per chunk and the memory the recordings take
#   3. steady stage-2 epochs with the fast settings + compile_loss, augment_batches=32 and graph_augment
#   4. a reference-style stage-2 epoch at (nearly) full size, 49,920 of the 50,000-image pass, timed instead
#      of extrapolated from shortened ones: the denominator of stage 2's per-trial ratio
#   5. steady stage-2 epochs with the fast settings alone, the baseline of 3 in the same call
#   6. packed_seeds: the bare training step of 1, 2, 4, 8 packed seeds, the whole step in one CUDA graph
#   7. a reference-style stage-1 epoch at full size (12,288 of the 12,406 images)
#   8. a steady stage-2 epoch profiled with the fast settings (profile_epoch: GPU busy time against the
#      epoch's time, launches, syncs, top ops)
#   9. steady stage-1 epochs with the fast settings, and a steady stage-1 epoch profiled
#  10. the same-numbers check of the fast settings with compile_loss and graph_augment (records within the
#      stated tolerances; the eager short batches beside the CUDA graphs are checked on a GPU too)
#   OUT=/some/folder bash benchmarks/gpu_next.sh
source "$(dirname "$0")/gpu_common.sh"
step 220 packed_stage1.txt python3 -m benchmarks.packed_stage1 --device cuda --counts 4 "${FAST1[@]}"
step 100 graph_augment_check.txt python3 -m benchmarks.graph_augment_check --device cuda
step 100 steady_stage2.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 "${FAST2[@]}" \
    --set stage2.compile_loss=true --set stage2.augment_batches=32 --set stage2.graph_augment=true
step 70 reference_full.txt python3 -m benchmarks.bench_loops --device cuda --loops ref --stages 2 --batches 390 \
    --repeats 1 --warmup 0
step 90 steady_stage2.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 "${FAST2[@]}"
step 60 packed_seeds.txt python3 -m benchmarks.packed_seeds --device cuda --channels-last --precision bf16 \
    --modes graph
step 40 reference_full.txt python3 -m benchmarks.bench_loops --device cuda --loops ref --stages 1 --batches 96 \
    --repeats 3 --warmup 0
step 90 profile_stage2.txt python3 -m benchmarks.profile_epoch --device cuda --stage 2 --fraction 0.3 "${FAST2[@]}"
step 80 steady_stage1.txt python3 -m benchmarks.steady_epochs --device cuda --epochs 4 --stages 1 "${FAST1[@]}"
step 60 profile_stage1.txt python3 -m benchmarks.profile_epoch --device cuda --stage 1 --fraction 0.5 "${FAST1[@]}"
step 70 same_numbers.txt python3 -m benchmarks.same_numbers --device cuda "${FAST1[@]}" "${FAST2[@]}" \
    --set stage2.compile_loss=true --set stage1.graph_augment=true --set stage2.graph_augment=true
echo "$(date +%T) end after ${SECONDS} s"
exit "$FAILED"
