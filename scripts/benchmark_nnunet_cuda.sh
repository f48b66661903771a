#!/usr/bin/env bash
# nxp2seg and nnU-Net v2 side by side on one CUDA GPU (docs/benchmarks/nnunet.md, "On a GPU").
#
#   scripts/benchmark_nnunet_cuda.sh WORKDIR [SECONDS]
#
# Runs scripts/benchmark_nnunet.py --device cuda in WORKDIR (resumable: a rerun skips the
# finished stages) for at most SECONDS (default: no limit), then writes WORKDIR/summary.json
# and the table of the stages finished so far. Both systems and nxp2seg must import in
# $PYTHON (default python3): one environment holds both here, as on a lent GPU machine.
# BUDGETS (default "1 2 4") are the multiples of nxp2seg's training wall time; WORKERS
# (default 8) nxp2seg's DataLoader workers, PROCESSES (default 12, nnU-Net's own default
# per GPU) nnU-Net's planning processes and threads.
set -uo pipefail
work=${1:?usage: scripts/benchmark_nnunet_cuda.sh WORKDIR [SECONDS]}
limit=${2:-0}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
"$py" -c "import torch, sys; ok = torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0) if ok else 'no CUDA device'); sys.exit(0 if ok else 2)" || exit 2
"$py" -c "import nnunetv2, SimpleITK, monai, nibabel, hydra, pytorch_lightning, nxp2seg.train" || {
    echo "nnU-Net v2 and nxp2seg must both import in $py (see docs/benchmarks/nnunet.md)"; exit 3; }
# shellcheck disable=SC2086  # BUDGETS is a list
timeout "$limit" "$py" scripts/benchmark_nnunet.py --device cuda --nnunet-python "$(command -v "$py")" \
    --workdir "$work" --budgets ${BUDGETS:-1 2 4} --processes "${PROCESSES:-12}" \
    --nxp2seg-overrides "data.loader.num_workers=${WORKERS:-8}" "data.loader.cache_num_workers=${PROCESSES:-12}" \
    data.loader.pin_memory=true
rc=$?
[ "$rc" = 124 ] && echo "stopped after $limit s; the finished stages follow"
"$py" scripts/benchmark_nnunet.py --device cuda --workdir "$work" --report
exit "$rc"
