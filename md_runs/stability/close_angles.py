"""Label frames with one angle closed (``sake_md.learn.closed_angle_frames``) outside a loop, for a fine-tune.

    taskset -c 0 python md_runs/stability/close_angles.py ../shared/data/rmd17/rmd17_malonaldehyde_train_01.npz \
        --count 50 --offset runs/stability/learn_malonaldehyde_stretch50/oracle_offset.json \
        --out runs/stability/closed_malonaldehyde/closed.extxyz --record md_runs/stability/malonaldehyde/closed.json

The same frames a loop's round 0 with ``sake-md learn --close COUNT --seed 0`` draws (its generator, the bonds of
the training file's first frame), labelled by the PySCF oracle (PBE/def2-SVP) shifted by the offset a loop on the
same file measured (``oracle_offset.json``). The frames stay in runs/ (rMD17 positions with one atom moved); the
record (``--record``: counts, CPU seconds, the closed pairs and their energies above the file's highest) is ours.
"""

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np

from sake_md.data import read_dataset
from sake_md.files import atomic_write
from sake_md.learn import closed_angle_frames, label, make_oracle
from sake_md.md.bonds import find_bonds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the training file (one molecule)")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--offset", required=True, help="a loop's oracle_offset.json on the same file")
    parser.add_argument("--oracle", default="pyscf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the labelled frames (extxyz)")
    parser.add_argument("--record", help="a JSON summary")
    args = parser.parse_args()

    data = read_dataset(args.data)
    bonds = find_bonds(data.subset([0]).to_atoms()[0])
    frames = closed_angle_frames(data, bonds, args.count, np.random.default_rng([args.seed, 0, 1]))
    offset = json.loads(Path(args.offset).read_text())["offset_eV"]
    labelled, cpu = label(frames, make_oracle(args.oracle), offset)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: ase.io.write(tmp, labelled, format="extxyz"))

    train = np.stack(data.positions)
    ceiling = float(data.energy.max())
    rows = []
    for atoms in labelled:
        j, i, k = (int(v) for v in atoms.info["closed_angle"])  # j moved, turning about i toward k
        rows.append({"angle": [j, i, k], "symbols": [atoms.get_chemical_symbols()[v] for v in (j, i, k)],
                     "distance_A": float(atoms.get_distance(j, k)),
                     "data_closest_A": float(np.linalg.norm(train[:, j] - train[:, k], axis=-1).min()),
                     "above_highest_eV": float(atoms.get_potential_energy() - ceiling),
                     "oracle_cpu_s": float(atoms.info["oracle_cpu_s"])})
    summary = {"data": args.data, "count": args.count, "labelled": len(labelled), "oracle": args.oracle,
               "offset_eV": offset, "oracle_cpu_s": cpu, "seed": args.seed, "frames": rows}
    print(f"{args.out}: {len(labelled)} of {args.count} labelled, {cpu:.0f} CPU-s")
    if args.record:
        Path(args.record).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
