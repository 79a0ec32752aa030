"""Are the frames `fusion_check.py` flags really off the potential energy surface? PySCF (rMD17's level of theory)
on the first flagged frame of each run and on the frame 0.1 ps before it, relative to the training data's highest
energy (after the oracle's constant offset, `oracle_check_ethanol.json`).

    python md_runs/stability/fusion_energies.py STATE.pt --reference ../shared/data/rmd17/rmd17_ethanol_train_01.npz
"""

import argparse

import numpy as np
import torch
from ase import Atoms

from sake_md.data import read_dataset
from sake_md.learn import pair_distances
from sake_md.oracles import OracleFailed, PySCFCalculator

OFFSET_EV = -0.0008  # PySCF + offset = rMD17 (ethanol; oracle_check_ethanol.json)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state")
    parser.add_argument("--reference", required=True)
    args = parser.parse_args()
    base = read_dataset(args.reference)
    closest, top = pair_distances(np.stack(base.positions)).min(0), base.energy.max()
    run = torch.load(args.state, map_location="cpu", weights_only=True)["run"]
    frames, steps = run["trajectory"].numpy().astype(np.float64), run["trajectory_steps"].numpy()
    fused = (pair_distances(frames) < closest - 0.5).any(-1)
    for r in range(frames.shape[1]):
        if not fused[:, r].any():
            continue
        first = int(np.argmax(fused[:, r]))
        for k in (first - 2, first):
            atoms = Atoms(numbers=base.numbers[0], positions=frames[k, r])
            atoms.calc = PySCFCalculator()
            try:
                text = f"{atoms.get_potential_energy() + OFFSET_EV - top:+.2f} eV"
            except OracleFailed:
                text = "no SCF convergence"
            print(f"run {r}, {steps[k] * 0.5e-3:.2f} ps{' (flagged)' if k == first else ''}: E - max(training) = "
                  f"{text}", flush=True)


if __name__ == "__main__":
    main()
