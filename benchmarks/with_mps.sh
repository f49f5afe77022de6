#!/usr/bin/env bash
# Runs a command with NVIDIA MPS (Multi-Process Service) on, then turns MPS off again.
#   bash benchmarks/with_mps.sh python3 -m benchmarks.gpu_packing --counts 1 2 4 8 ...
# Without MPS, processes sharing a GPU take turns (time-slicing): a kernel of one never runs beside a kernel
# of another, and ResNet-32's small kernels each leave most of an H100 idle. Under MPS the processes' kernels
# run side by side. The daemon gets a private pipe folder, so only this command's processes use it, and it is
# told to quit however the command ends; the GPU's own settings (compute mode, MIG) are left as they are.
# Exits 3 without running the command where MPS is not available.
set -u
if ! command -v nvidia-cuda-mps-control >/dev/null; then
    echo "MPS not available: no nvidia-cuda-mps-control on PATH"
    exit 3
fi
dir=$(mktemp -d)
export CUDA_MPS_PIPE_DIRECTORY=$dir/pipe CUDA_MPS_LOG_DIRECTORY=$dir/log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
stop() {
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    sleep 1
    tail -n 5 "$CUDA_MPS_LOG_DIRECTORY"/control.log 2>/dev/null | sed 's/^/mps log: /'
    rm -rf "$dir"
}
if ! nvidia-cuda-mps-control -d; then
    echo "MPS not available: the control daemon did not start"
    rm -rf "$dir"
    exit 3
fi
trap stop EXIT
trap 'exit 143' TERM INT
echo "MPS on (pipe folder $CUDA_MPS_PIPE_DIRECTORY)"
"$@"
rc=$?
# A server started for the command's processes: proof that they ran under MPS, not beside it.
echo "MPS servers during the run: $(echo get_server_list | nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')"
exit "$rc"
