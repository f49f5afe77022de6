# What the GPU scripts share (sourced, not run): the paper grid's fast settings, and `step`, which runs one
# part under its time limit, keeps what it printed as it printed it, and records how it ended.
set -u -o pipefail
OUT=${OUT:-$(mktemp -d)}     # a fresh folder unless told: files are appended to, never mixed with old runs
BUDGET_S=${BUDGET_S:-540}    # a part starts only if its limit fits in what is left: one 10-minute device call
SKIP=${SKIP:-0}              # parts an earlier call ran: a second call goes on with part SKIP + 1
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
FAST1=(--set stage1.channels_last=true --set stage1.precision=bf16 --set stage1.compile=true
       --set stage1.compile_mode=reduce-overhead)
FAST2=(--set stage2.channels_last=true --set stage2.precision=bf16 --set stage2.compile=true
       --set stage2.compile_mode=reduce-overhead)
# What experiments/paper_cifar_lt.yaml trains with (tests/test_grid.py checks the grid's side).
GRID1=("${FAST1[@]}" --set stage1.graph_step=true --set stage1.fused_sgd=true)
GRID2=("${FAST2[@]}" --set stage2.compile_loss=true --set stage2.augment_batches=32 --set stage2.graph_augment=true
       --set stage2.graph_step=true --set stage2.fused_sgd=true)
FAILED=0    # the exit status of the first part that failed, the scripts' own exit status
PART=0      # the number of the part `step` was last called for
OUT_OF_TIME=0  # the first part skipped for time (0: none): later ones are skipped too, so parts run in order

step() {  # step LIMIT_S OUTPUT_FILE COMMAND...
    local limit=$1 file=$OUT/$2 rc
    shift 2
    PART=$((PART + 1))
    if (( PART <= SKIP )); then
        echo "$(date +%T) part $PART skipped (SKIP=$SKIP): $*"
        return
    fi
    if (( ! OUT_OF_TIME && SECONDS + limit > BUDGET_S )); then
        OUT_OF_TIME=$PART
        echo "$(date +%T) part $PART needs ${limit} s, $((BUDGET_S - SECONDS)) s are left of ${BUDGET_S}: it and" \
             "the parts after it are skipped; a second call goes on with SKIP=$((PART - 1))"
    fi
    if (( OUT_OF_TIME )); then
        echo "$(date +%T) part $PART skipped for time (SKIP=$((OUT_OF_TIME - 1)) runs it): $*" | tee -a "$file"
        return
    fi
    echo "$(date +%T) part $PART: $*" | tee -a "$file"
    timeout "$limit" "$@" 2>&1 | grep --line-buffered -v Warning | tee -a "$file"
    rc=${PIPESTATUS[0]}
    if (( rc != 0 )); then
        echo "$(date +%T) exit $rc$( ((rc == 124)) && echo ', timed out')" | tee -a "$file"
        (( FAILED )) || FAILED=$rc
    fi
}

echo "output in $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
