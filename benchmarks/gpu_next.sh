#!/usr/bin/env bash
# The next GPU measurement of the speed issue (about 7 minutes on an H100): where a steady epoch of each
# stage spends its time with the paper grid's fast settings (profile_epoch: GPU busy time against wall
# time, launches, syncs, top ops), steady-state epochs of both stages with those settings, stage 2 also with
# the candidates not yet measured on a GPU (compile_loss, larger augmentation chunks), then the
# same-numbers check of compile_loss.
#   OUT=/some/folder bash benchmarks/gpu_next.sh
set -u
OUT=${OUT:-/tmp}
export PYTHONPATH=.
FAST1="--set stage1.channels_last=true --set stage1.precision=bf16 --set stage1.compile=true --set stage1.compile_mode=reduce-overhead"
FAST2="--set stage2.channels_last=true --set stage2.precision=bf16 --set stage2.compile=true --set stage2.compile_mode=reduce-overhead"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for stage in 1 2; do
    fast=$FAST1; [ $stage = 2 ] && fast=$FAST2
    date +"%T profile stage $stage"
    timeout "${PROFILE_S:-90}" python3 -m benchmarks.profile_epoch --device cuda --stage $stage --fraction 0.3 \
        $fast 2>&1 | grep -v Warning | tee "$OUT/profile_stage$stage.txt"
done
date +"%T steady epochs, both stages: fast"
timeout "${STEADY_S:-150}" python3 -m benchmarks.steady_epochs --device cuda --epochs 3 $FAST1 $FAST2 2>&1 \
    | grep -v Warning | tee "$OUT/steady_fast.txt"
for extra in "--set stage2.compile_loss=true" "--set stage2.compile_loss=true --set stage2.augment_batches=32"; do
    date +"%T steady stage 2: fast ${extra}"
    timeout "${STEADY_S:-100}" python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 $FAST2 $extra \
        2>&1 | grep -v Warning | tee -a "$OUT/steady_stage2_candidates.txt"
done
date +"%T same numbers"
timeout "${SAME_S:-70}" python3 -m benchmarks.same_numbers --device cuda --set stage2.compile_loss=true 2>&1 \
    | tee "$OUT/same_numbers_compile_loss.txt"
date +"%T end"
