#!/usr/bin/env bash
# Re-runs the full-budget recipe runs of docs/recipe.md (30 minutes each on one core; two at a time on a
# 2-core machine) and the tail analysis. DATA defaults to ../shared/data/rmd17 beside the repository.
#     bash md_runs/recipe/reproduce.sh [RUN ...]      RUN in: c1 c2 c3 malonaldehyde aspirin
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/rmd17}
OUT=${OUT:-runs/recipe}
train() {  # name, core, molecule, extra options
  local name=$1 core=$2 mol=$3; shift 3
  taskset -c "$core" sake-md train --recipe cpu --time-budget 30m --threads 1 --no-progress \
      --data "$DATA/rmd17_${mol}_train_01.npz" --test "$DATA/rmd17_${mol}_test_01.npz" --out "$OUT/$name" "$@"
  python md_runs/recipe/tail.py "$OUT/$name/best.pt" --data "$DATA/rmd17_${mol}_test_01.npz" \
      --train "$DATA/rmd17_${mol}_train_01.npz" --json "md_runs/recipe/tail_${name}.json"
}
runs=${*:-c1 c2 c3 malonaldehyde aspirin}
for run in $runs; do
  case $run in
    c1) train c1_ethanol_eager 0 ethanol --no-compile ;;           # the new recipe without the compiled step
    c2) train c2_ethanol 0 ethanol ;;                              # the CPU recipe as shipped
    c3) train c3_ethanol_mse 0 ethanol --loss mse --energy-weight 10 ;;  # the MSE lever at full budget
    malonaldehyde) train budget_malonaldehyde 1 malonaldehyde ;;
    aspirin) train budget_aspirin 0 aspirin ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
sake-md curves "$OUT"/c1_ethanol_eager "$OUT"/c2_ethanol "$OUT"/c3_ethanol_mse --plot docs/recipe_curves.png || true
