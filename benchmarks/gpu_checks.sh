#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU (and possibly little time on it):
# the CUDA tests, then the four --device cuda benchmarks and the two printed diagnoses, each
# under its own time limit and in order of what matters most (the mixers' host syncs first,
# the whole corruption suite last), so a cut-short run still leaves the first results. Results and logs go to OUT (default $TMPDIR/robustmix-gpu-checks); copy the
# *-cuda.json files to benchmarks/results/ and run table.py --write-readme to publish them.
#
#   bash benchmarks/gpu_checks.sh [OUT]     # the limits add up to 560 s
#   BASE=REV bash benchmarks/gpu_checks.sh  # first, the working tree vs revision REV on the GPU
#                                           # (revisions.py --device cuda, 60 s more)
#
# Peers the machine lacks (torch-dct, imagecorruptions) can come as source on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${TMPDIR:-/tmp}/robustmix-gpu-checks}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python=${PYTHON:-python3}

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_checks.sh needs a CUDA GPU (torch.cuda.is_available() is False)" >&2
    exit 2
fi

step() {  # step NAME LIMIT_S COMMAND...: run, log, and say how it ended
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    tail -n 3 "$out/$name.log"
}

mkdir -p "$out"
: > "$out/summary.txt"
"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/summary.txt"
step tests 100 "$python" -m pytest -q -n 6 -p no:cacheprovider -k "cuda or graph" tests
if [ -n "${BASE:-}" ]; then
    step revisions 60 "$python" benchmarks/revisions.py --base "$BASE" --device cuda --rounds 16
fi
step cuda_overhead 60 "$python" benchmarks/cuda_overhead.py
step train_step 100 "$python" benchmarks/train_step.py --device cuda --out "$out/train_step-cuda.json"
step mixing 70 "$python" benchmarks/mixing.py --device cuda --out "$out/mixing-cuda.json"
step mixers 20 "$python" benchmarks/mixers.py --device cuda --out "$out/mixers-cuda.json"
step jpeg_stages 40 "$python" benchmarks/jpeg_stages.py --device cuda
step corruptions 170 "$python" benchmarks/corruptions.py --device cuda --runs 1 --out "$out/corruptions-cuda.json"
