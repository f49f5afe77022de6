#!/usr/bin/env bash
# The next GPU measurement of the speed issue (about 7 minutes on an H100): where a stage-2 epoch's time goes
# (torch.profiler's top ops with the paper grid's fast settings), steady-state stage-2 epochs with those
# settings alone and with each candidate not yet measured on a GPU (compile_loss, larger augmentation
# chunks), then the same-numbers check of compile_loss.
#   OUT=/some/folder bash benchmarks/gpu_next.sh
set -u
OUT=${OUT:-/tmp}
export PYTHONPATH=.
FAST2="--set stage2.channels_last=true --set stage2.precision=bf16 --set stage2.compile=true --set stage2.compile_mode=reduce-overhead"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date +"%T profile"
timeout "${PROFILE_S:-120}" python3 -m benchmarks.bench_loops --device cuda --stages 2 --batches 40 --repeats 1 \
    --profile $FAST2 2>&1 | grep -v Warning | tee "$OUT/profile_stage2.txt"
for extra in "" "--set stage2.compile_loss=true" "--set stage2.augment_batches=32" \
             "--set stage2.compile_loss=true --set stage2.augment_batches=32"; do
    date +"%T steady stage 2: fast ${extra}"
    timeout "${STEADY_S:-100}" python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --stages 2 $FAST2 $extra \
        2>&1 | grep -v Warning | tee -a "$OUT/steady_stage2.txt"
done
date +"%T same numbers"
timeout "${SAME_S:-70}" python3 -m benchmarks.same_numbers --device cuda --set stage2.compile_loss=true 2>&1 \
    | tee "$OUT/same_numbers_compile_loss.txt"
date +"%T end"
