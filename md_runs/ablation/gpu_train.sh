#!/usr/bin/env bash
# Train the study's ethanol and malonaldehyde runs on one GPU, then pack what finished.
#
# Each variant's 6 runs (2 molecules x 3 seeds, all 9-atom C/H/O) train together in one job
# (`sake-md study --stack`, sake_md/stacked.py); every group's step is compiled side by side first
# (--precompile). With CUDA MPS (SAKE_MD_MPS=1) the jobs' small kernels run side by side and all four groups
# go at once; without it the GPU time-slices between processes, and two groups go at a time.
#
#     md_runs/ablation/gpu_train.sh DATA_DIR [SECONDS] [PACK_DIR] [STUDY OPTIONS...]
#
# e.g. `... /tmp/pack --variant sake-dot` trains one group (6 runs). Runs with a train record in the
# repository are skipped.
#
# Afterwards PACK_DIR holds records.tar (records/ and each run's config, log, cost and metrics) and
# best_NN.tar, the best.pt of every finished run in parts of at most 15 MB, in the order the report needs
# them. Unpack them in the arm's folder (md_runs/ablation/, or md_runs/ablation/equal-cost/ with --arm equal-cost);
# the same `sake-md study md_runs/ablation/study.toml [--arm ...]` then runs the MD stage.
set -u
DATA=${1:?usage: gpu_train.sh DATA_DIR [SECONDS] [PACK_DIR]}
BUDGET=${2:-450}
PACK=${3:-/tmp/pack}
shift $(( $# < 3 ? $# : 3 ))
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$PACK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$PACK/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$PACK/gpu.txt"

# MPS ran four groups as fast as one, but once all four died together with "an illegal memory access"
# after 2 minutes (README, The ablation study): opt in with SAKE_MD_MPS=1.
JOBS=2
if [ "${SAKE_MD_MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
    JOBS=4
    echo "MPS on: $JOBS groups at a time" | tee -a "$PACK/gpu.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS off: $JOBS groups at a time" | tee -a "$PACK/gpu.txt"
  fi
fi

cd "$ROOT"
START=$(date +%s)
timeout -s TERM "$BUDGET" python3 -m sake_md study md_runs/ablation/study.toml --data-dir "$DATA" --device cuda \
  --stack --precompile --train-only --jobs "$JOBS" --molecule ethanol --molecule malonaldehyde "$@"
echo "study exit $? after $(( $(date +%s) - START )) s" | tee -a "$PACK/gpu.txt"

# Pack from the folder of the arm that ran (an arm, e.g. --arm equal-cost, keeps records/ and runs/ of its own).
ARM=""
while [ $# -gt 0 ]; do
  case $1 in --arm) ARM=${2:-}; shift ;; --arm=*) ARM=${1#--arm=} ;; esac
  shift
done
OUT=$(python3 -c "import sys; from sake_md.study.definition import load_study; print(load_study(sys.argv[1], arm=sys.argv[2] or None).out)" \
  md_runs/ablation/study.toml "$ARM") || exit 1
cd "$OUT"
tar cf "$PACK/records.tar" records $(ls runs/*/*/*/cost.json runs/*/*/*/job.log runs/*/*/*/train/metrics.jsonl \
  runs/*/*/*/train/config.json 2>/dev/null)
python3 - "$PACK" <<'EOF'
import sys, tarfile
from pathlib import Path

pack, limit = Path(sys.argv[1]), 15e6
order = ["sake-no-spatial", "sake", "sake-dot", "sake-sh"]
done = [p for p in Path("records").glob("*/*/seed*.train.json")]
files = [Path("runs") / p.parent.parent.name / p.parent.name / p.name.split(".")[0] / "train" / "best.pt" for p in done]
files = [f for f in files if f.exists()]  # records that came with the repository have no run folder here
files.sort(key=lambda f: (order.index(f.parts[2]) if f.parts[2] in order else 9, str(f)))
parts, size = [[]], 0.0
for f in files:
    if size + f.stat().st_size > limit and parts[-1]:
        parts.append([])
        size = 0.0
    parts[-1].append(f)
    size += f.stat().st_size
for k, part in enumerate(p for p in parts if p):
    with tarfile.open(pack / f"best_{k:02d}.tar", "w") as tar:
        for f in part:
            tar.add(f)
    print(f"best_{k:02d}.tar: {len(part)} checkpoints")
EOF
ls -la "$PACK"
