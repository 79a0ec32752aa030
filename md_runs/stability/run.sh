#!/usr/bin/env bash
# Issue 22's long runs: train one candidate potential with the shipped recipe (30 minutes on one core), then
# the full stability protocol on it (`sake-md compare`, mdsim-md17: 5 runs x 300 ps at 500 K), resumable.
#   taskset -c 0 bash md_runs/stability/run.sh ethanol sake-dot [TIME [MODEL]]
# MODEL: an already trained checkpoint to run the protocol on (e.g. potentials/stability/c2/sake_ethanol.pt, the
# potential shipped until session 16, as NAME "shipped"), instead of training one.
# Run it again after a kill: the training resumes from last.pt (or is skipped once the model is in
# potentials/stability/), the MD from
# runs/stability/<molecule>/<variant>/state (at most 1 ps lost; not committed: it grows with the run and starts from
# rMD17 frames). The rMD17 folder: $RMD17.
set -euo pipefail
cd "$(dirname "$0")/../.."
molecule=$1 variant=$2 time=${3:-300ps}
data=${RMD17:-../shared/data/rmd17}
train=runs/stability/${variant}_${molecule}     # checkpoints and logs (ignored by git)
out=md_runs/stability/${molecule}/${variant}    # what is committed: the run's settings, curve and compare.json
md=runs/stability/${molecule}/${variant}        # compare's --out: its MD state, then its results
model=${4:-potentials/stability/${variant}_${molecule}.pt}   # the candidate (potentials/: checkpoints live there)
mkdir -p "$out" "$(dirname "$model")"
if [ ! -f "$model" ]; then
    if [ -f "$train/last.pt" ]; then
        sake-md train --resume --out "$train" --threads 1 --no-progress
    else
        sake-md train --model "$variant" --recipe cpu --time-budget 30m --threads 1 --no-progress \
            --data "$data/rmd17_${molecule}_train_01.npz" --test "$data/rmd17_${molecule}_test_01.npz" --out "$train"
    fi
    cp "$train/best.pt" "$model"
    cp "$train/metrics.jsonl" "$train/config.json" "$out/"
fi
resume=()
[ -d "$md/state" ] && resume=(--resume)
sake-md compare "$model" --preset mdsim-md17 --time "$time" --threads 1 "${resume[@]}" \
    --reference "$data/rmd17_${molecule}_train_01.npz" --test "$data/rmd17_${molecule}_test_01.npz" --out "$md"
cp "$md"/compare.json "$out/"
cp "$md"/*.png "$out/" 2>/dev/null || true   # plots only with matplotlib
