"""Why the runs collapse: the energy along one stretched bond (or closing angle), from DFT and from the potentials.

The collapses of issue 22 are C–H bonds stretched past 1.6 Å (reference 1.11 Å) at 500 K, where DFT puts such a
stretch electronvolts uphill. This scan takes one frame, moves atom j along the i→j axis (every other atom fixed)
and compares each potential's energy profile with PySCF's (PBE/def2-SVP, rMD17's level of theory), both relative
to the frame itself, beside the range of i–j distances in the training data (outside it, no frame tells them).

    python md_runs/stability/bond_scan.py --frames ../shared/data/rmd17/rmd17_ethanol_test_01.npz --frame 0 \
        --bond 0 3 --reference ../shared/data/rmd17/rmd17_ethanol_train_01.npz \
        --model potentials/sake_ethanol.pt --model potentials/stability/learn-r2_ethanol.pt --out scan.json

``--angle J I K`` scans an angle instead: atom J turns about atom I (``sake_md.learn.turned``: in the plane of the
three, its bond to I kept) so that J–K takes each length, e.g. two hydrogens of one carbon brought together, where
malonaldehyde's candidate fused them.
"""

import argparse
import json
import time

import numpy as np

from sake_md.calculator import SAKECalculator
from sake_md.data import read_dataset
from sake_md.learn import make_oracle, turned
from sake_md.md.reference import read_reference


def stretched(atoms, i: int, j: int, length: float):
    """``atoms`` with atom j moved along the i→j axis so that |r_ij| = ``length`` Å."""
    out = atoms.copy()
    axis = out.positions[j] - out.positions[i]
    out.positions[j] = out.positions[i] + axis / np.linalg.norm(axis) * length
    return out


def closed(atoms, j: int, i: int, k: int, distance: float):
    """``atoms`` with atom j turned about atom i (its bond kept) until |r_jk| = ``distance`` Å."""
    out = atoms.copy()
    out.positions = turned(atoms.positions, j, i, k, distance)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", required=True, help="The file of the frame to stretch.")
    parser.add_argument("--frame", type=int, default=0)
    scan = parser.add_mutually_exclusive_group(required=True)
    scan.add_argument("--bond", type=int, nargs=2, metavar=("I", "J"), help="J moves along I→J.")
    scan.add_argument("--angle", type=int, nargs=3, metavar=("J", "I", "K"), help="J turns about I; lengths are J–K.")
    parser.add_argument("--lengths", type=float, nargs=3, default=(0.9, 2.2, 14), metavar=("FROM", "TO", "N"))
    parser.add_argument("--reference", required=True, help="The training data: the i–j distances it holds.")
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--oracle", default="pyscf")
    parser.add_argument("--dft-from", help="A scan of the same frame, bond and lengths: reuse its oracle profile.")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.angle:
        j, _, i = args.angle  # the scanned pair: K–J, J moves
    else:
        i, j = args.bond
    atoms = read_reference(args.frames).atoms(args.frame)
    train = np.stack(read_dataset(args.reference).positions)
    held = np.linalg.norm(train[:, j] - train[:, i], axis=-1)
    shortest, longest = float(held.min()), float(held.max())
    lengths = np.linspace(args.lengths[0], args.lengths[1], int(args.lengths[2]))
    frames = [atoms] + [closed(atoms, *args.angle, d) if args.angle else stretched(atoms, i, j, d) for d in lengths]

    def profile(calc) -> list[float]:
        energies = []
        for a in frames:
            a = a.copy()
            a.calc = calc
            energies.append(a.get_potential_energy())
        return [e - energies[0] for e in energies[1:]]

    start = time.process_time()
    if args.dft_from:
        before = json.load(open(args.dft_from))
        same = (before["frames"], before["frame"], before["bond"], before["oracle"], before.get("angle")) == (
            args.frames, args.frame, [i, j], args.oracle, args.angle)
        if not same or not np.allclose(before["lengths_A"], lengths):
            raise SystemExit(f"{args.dft_from} scanned another frame, bond, oracle or lengths")
        profiles, dft_cpu_s = {"dft": before["energy_eV"]["dft"]}, before["oracle_cpu_s"]
    else:
        profiles = {"dft": profile(make_oracle(args.oracle))}
        dft_cpu_s = time.process_time() - start
    for path in args.model:
        profiles[path] = profile(SAKECalculator(path))
    symbols = atoms.get_chemical_symbols()
    name = f"{symbols[i]}{i}–{symbols[j]}{j}" + (f" (turning about {symbols[args.angle[1]]}{args.angle[1]})"
                                                 if args.angle else "")
    print(f"{name}: {float(atoms.get_distance(i, j)):.3f} Å in frame {args.frame}, {shortest:.3f} to {longest:.3f} Å "
          f"in the training data; energy relative to the frame (eV)")
    print("length (Å) " + " ".join(f"{k[-28:]:>28}" for k in profiles))
    for k, d in enumerate(lengths):
        mark = "*" if not shortest <= d <= longest else " "
        print(f"{d:9.3f}{mark} " + " ".join(f"{p[k]:28.3f}" for p in profiles.values()))
    print("* outside the training data's range")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"frames": args.frames, "frame": args.frame, "bond": [i, j], "angle": args.angle, "name": name,
                       "frame_length_A": float(atoms.get_distance(i, j)), "training_shortest_A": shortest,
                       "training_longest_A": longest,
                       "lengths_A": lengths.tolist(), "energy_eV": profiles, "oracle": args.oracle,
                       "oracle_cpu_s": dft_cpu_s}, f, indent=1)


if __name__ == "__main__":
    main()
