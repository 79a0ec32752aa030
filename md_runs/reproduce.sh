#!/usr/bin/env bash
# Re-run the MD numbers of the study: stability comparison, NVE energy drift, MD throughput.
#   bash md_runs/reproduce.sh [CKPT ...]       (default: the shipped potentials/sake_ethanol.pt)
# Environment: TIME (default 10ps; the full protocol is 300ps), RUNS (5), RMD17 (../shared/data/rmd17),
# NVE_STEPS (20000 = 10 ps), BENCH_SECONDS (3, per throughput measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
RMD17=${RMD17:-../shared/data/rmd17}
TIME=${TIME:-10ps}
RUNS=${RUNS:-5}
NVE_STEPS=${NVE_STEPS:-20000}
BENCH_SECONDS=${BENCH_SECONDS:-3}
CKPTS=("$@")
[ ${#CKPTS[@]} -eq 0 ] && CKPTS=(potentials/sake_ethanol.pt)
OUT=md_runs/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE  # shared machines: idle OpenMP threads must not spin

# 1. stability protocol (Nosé–Hoover 500 K, 0.5 fs, frame every 100 steps, 5 runs from test_01 frames)
sake-md compare "${CKPTS[@]}" --preset mdsim-md17 --runs "$RUNS" --time "$TIME" --no-progress \
    --reference "$RMD17/rmd17_ethanol_train_01.npz" --test "$RMD17/rmd17_ethanol_test_01.npz" \
    --out "$OUT/compare" | tee "$OUT/compare.txt"

# 2. energy conservation: NVE, float64, 0.5 fs from 300 K, 10 ps (exit status 3 = collapsed)
sake-md run --potential "${CKPTS[0]}" --ensemble nve --dtype float64 --steps "$NVE_STEPS" --interval 100 \
    --traj "$OUT/nve.extxyz" --log "$OUT/nve.log" --no-progress | tee "$OUT/nve.txt" || true

# 3. throughput: batched engine at 1/8/32/128 replicas vs ASE Langevin, float32, 2 threads
python benchmarks/bench_md.py --checkpoint "${CKPTS[0]}" --min-time "$BENCH_SECONDS" --json "$OUT/bench_md.json" | tee "$OUT/bench_md.txt"
echo "results in $OUT"
