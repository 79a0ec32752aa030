"""Where the protocol's bond criterion is blind: pairs of atoms that come together while every bond keeps its length.

Fu et al.'s collapse criterion (and `sake-md compare`'s) looks at bonded pairs only: a run collapses when a bond
deviates by more than 0.5 Å from its reference. Two geminal hydrogens can fuse (H–H 0.1 Å) with both C–H bonds
intact. This script reads saved MD state (`sake-md compare --out DIR` keeps `DIR/state/*.pt`; `sake-md learn`
keeps `roundR/md_state.pt`) and reports, per run, the first time any pair of atoms is more than 0.5 Å closer than
in every frame of the training data (the same Δ, on the other side of every pair), beside the bond collapse.

    python md_runs/stability/fusion_check.py STATE.pt [...] --reference ../shared/data/rmd17/rmd17_ethanol_train_01.npz
"""

import argparse
import json

import numpy as np
import torch

from sake_md.data import read_dataset
from sake_md.learn import pair_distances


def fusion_times(state_path: str, closest: np.ndarray, timestep_fs: float, delta: float = 0.5) -> list[dict]:
    run = torch.load(state_path, map_location="cpu", weights_only=True)["run"]
    frames = run["trajectory"].numpy().astype(np.float64)  # (F, R, N, 3)
    steps = run["trajectory_steps"].numpy()
    d = pair_distances(frames)  # (F, R, P)
    fused = (d < closest - delta).any(-1)  # (F, R)
    i, j = np.triu_indices(frames.shape[2], 1)
    out = []
    for r, collapse in enumerate(run["monitor"]["collapse"]):
        first = int(np.argmax(fused[:, r])) if fused[:, r].any() else None
        # the pair furthest inside its closest training approach (not the closest pair: that is usually a bond)
        k = int((d[first, r] - closest).argmin()) if first is not None else None
        out.append({"run": r, "bond_collapse_ps": None if collapse is None else collapse[0] * timestep_fs / 1000,
                    "fused_ps": None if first is None else float(steps[first]) * timestep_fs / 1000,
                    "fused_pair": None if k is None else [int(i[k]), int(j[k])],
                    "fused_distance_A": None if k is None else float(d[first, r, k]),
                    "simulated_ps": float(run["step"]) * timestep_fs / 1000})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("states", nargs="+")
    parser.add_argument("--reference", required=True, help="The training data: each pair's closest approach.")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--out", help="Write the result as JSON, added to the file's states for the same reference.")
    args = parser.parse_args()
    closest = pair_distances(np.stack(read_dataset(args.reference).positions)).min(0)
    result = {path: fusion_times(path, closest, args.timestep_fs) for path in args.states}
    for path, runs in result.items():
        print(path)
        for r in runs:
            pair = "" if r["fused_pair"] is None else f" (atoms {r['fused_pair']}, {r['fused_distance_A']:.2f} Å)"
            print(f"  run {r['run']}: bond collapse {r['bond_collapse_ps']} ps, pair fused {r['fused_ps']} ps{pair}; "
                  f"simulated {r['simulated_ps']:g} ps")
    if args.out:  # an existing record of the same reference keeps its other states (one file per molecule)
        try:
            with open(args.out) as f:
                old = json.load(f)
        except FileNotFoundError:
            old = {}
        states = old.get("states", {}) if old.get("reference") == args.reference else {}
        with open(args.out, "w") as f:
            json.dump({"reference": args.reference, "delta_A": 0.5, "states": {**states, **result}}, f, indent=1)


if __name__ == "__main__":
    main()
