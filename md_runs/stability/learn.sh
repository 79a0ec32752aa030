#!/usr/bin/env bash
# Issue 22's data lever: `sake-md learn` on rMD17 ethanol with the PySCF oracle (PBE/def2-SVP), resumable.
#   OMP_NUM_THREADS=1 taskset -c 0 bash md_runs/stability/learn.sh [ROUNDS [MOLECULE [STRETCH]]]   (ethanol, 0)
# STRETCH > 0: also label that many frames a round with one bond stretched or compressed out of the data's range
# (`sake-md learn --stretch`), in a loop of its own (learn_<molecule>_stretch<STRETCH>, records in learn-stretch/).
# Round 0's committee is two potentials already trained on train_01, so it trains none: for ethanol the shipped
# one and the study's `sake`; for another molecule the study's `sake` and `sake-dot` (the only two there are).
# Later rounds train 2 members with the shipped recipe (30 minutes each, one core).
# Round r's member 0 is a candidate trained on train_01 + the frames labelled in rounds 0..r-1.
# The loop lives in runs/ (it holds a copy of rMD17 frames, which stay out of git); what is ours (the records,
# the oracle's frames and labels, the settings) is copied to md_runs/stability/<molecule>/learn/. Each round's MD
# state (runs/stability/learn_<molecule>/round<r>/md_state.pt, starting from rMD17 frames) stays in runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2} molecule=${2:-ethanol} stretch=${3:-0}
data=${RMD17:-../shared/data/rmd17}
loop=runs/stability/learn_${molecule} out=md_runs/stability/${molecule}/learn
if [ "$stretch" -gt 0 ]; then
    loop=${loop}_stretch${stretch} out=${out}-stretch
fi
if [ "$molecule" = ethanol ]; then
    start=(--start potentials/stability/c2/sake_ethanol.pt --start potentials/ablation/sake_ethanol.pt)
else
    start=(--start "potentials/ablation/sake_${molecule}.pt" --start "potentials/ablation/sake-dot_${molecule}.pt")
fi
sake-md learn --data "$data/rmd17_${molecule}_train_01.npz" --test "$data/rmd17_${molecule}_test_01.npz" \
    --out "$loop" --oracle pyscf --rounds "$rounds" --members 2 --time-budget 30m --threads 1 "${start[@]}" \
    --stretch "$stretch"
mkdir -p "$out"
cp "$loop/settings.json" "$loop/oracle_offset.json" "$out/"
cp -r "$loop/rounds" "$out/"
# the MD frames the oracle labelled are ours; distorted.extxyz stays in runs/: it is rMD17 frames with one atom moved
# (the rounds' records hold how many, and --stretch with the seed regenerates them)
for labelled in "$loop"/round*/labelled.extxyz; do
    r=$(basename "$(dirname "$labelled")"); cp "$labelled" "$out/${r}_labelled.extxyz"
done
