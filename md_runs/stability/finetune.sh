#!/usr/bin/env bash
# Issue 22: a potential fine-tuned (`sake-md train --init`) on the data loops' frames, resumable.
#   OMP_NUM_THREADS=1 taskset -c 1 bash md_runs/stability/finetune.sh [MOLECULE [NAME [BUDGET [LR]]]]
#   (ethanol, finetune, 30m, 3e-4)
# Start: ethanol, the potential shipped until session 16 (potentials/stability/c2/sake_ethanol.pt); malonaldehyde, the loop's round-2 candidate
# potentials/stability/learn-r2_malonaldehyde.pt; aspirin, the 2-hour potentials/stability/sake-2h_aspirin.pt (with
# DATA=FILE: no loop has run on it); START=CKPT in the environment: that checkpoint.
# Data: train_01 and every frame the loops labelled for the molecule: the MD frames of the data loop
# (runs/stability/learn_<molecule>/round<R>/data.extxyz holds train_01 and them; ethanol R=3, malonaldehyde R=2),
# the distortion loop's distorted frames (learn_<molecule>_stretch50/round*/distorted.extxyz) and EXTRA="FILE ..."
# (more labelled extxyz, e.g. close_angles.py's), those more than 1 eV/atom above train_01's highest energy left
# out as the loops do. Validation: the start potential's own 50 held-out frames of train_01 (--valid-pool 1000,
# seed 0), so the fine-tune never trains on them; best.pt is the last epoch (--select last: by validation alone,
# the start potential, unchanged, would win at epoch 1). The cpu recipe, peak LR 3e-4; DATA=FILE: that labelled
# file as the whole training data instead (e.g. another fine-tune's data.extxyz); ARGS="..." more options for
# `sake-md train` (e.g. --energy-weight 5).
# Then the protocol: bash md_runs/stability/run.sh MOLECULE NAME 300ps potentials/stability/NAME_MOLECULE.pt
set -euo pipefail
cd "$(dirname "$0")/../.."
molecule=${1:-ethanol} name=${2:-finetune} budget=${3:-30m} lr=${4:-3e-4}
data=${RMD17:-../shared/data/rmd17}
case $molecule in
    ethanol) start=potentials/stability/c2/sake_ethanol.pt round=3 ;;
    malonaldehyde) start=potentials/stability/learn-r2_malonaldehyde.pt round=2 ;;
    aspirin) start=potentials/stability/sake-2h_aspirin.pt round= ;;   # no loop has run on it: DATA=FILE
    *) start= round= ;;
esac
start=${START:-$start}   # START=CKPT: fine-tune another potential
if [ -z "$start" ] || { [ -z "$round" ] && [ -z "${DATA:-}" ]; }; then
    echo "finetune.sh: $molecule needs START=CKPT (no default start) and DATA=FILE (no loop's frames)" >&2; exit 2
fi
read -r -a extra <<< "${EXTRA:-}"
read -r -a more <<< "${ARGS:-}"
run=runs/stability/${name}_${molecule}    # holds rMD17 frames: stays out of git
mkdir -p "$run" potentials/stability md_runs/stability/"$molecule"/"$name"
if [ -n "${DATA:-}" ] && [ ! -f "$run/data.extxyz" ]; then
    cp "$DATA" "$run/data.extxyz"
elif [ ! -f "$run/data.extxyz" ]; then
    python - "$run/data.extxyz" "$data/rmd17_${molecule}_train_01.npz" \
        "runs/stability/learn_${molecule}/round${round}/data.extxyz" \
        runs/stability/learn_"${molecule}"_stretch50/round*/distorted.extxyz "${extra[@]}" <<'PY'
import sys
import ase.io
from sake_md.data import read_dataset
ceiling = read_dataset(sys.argv[2]).energy.max()
frames = [a for path in sys.argv[3:] for a in ase.io.read(path, ":")]
kept = [a for a in frames if a.get_potential_energy() - ceiling <= 1.0 * len(a)]
ase.io.write(sys.argv[1], kept, format="extxyz")
print(f"{sys.argv[1]}: {len(kept)} frames ({len(frames) - len(kept)} above the ceiling left out) from "
      f"{', '.join(sys.argv[3:])}")
PY
fi
if [ -f "$run/last.pt" ]; then
    sake-md train --resume --out "$run" --threads 1 --no-progress
else
    sake-md train --init "$start" --data "$run/data.extxyz" --valid-pool 1000 --select last --recipe cpu \
        --time-budget "$budget" --lr "$lr" --threads 1 --no-progress "${more[@]}" \
        --test "$data/rmd17_${molecule}_test_01.npz" --out "$run"
fi
cp "$run/best.pt" "potentials/stability/${name}_${molecule}.pt"
cp "$run/metrics.jsonl" "$run/config.json" md_runs/stability/"$molecule"/"$name"/
