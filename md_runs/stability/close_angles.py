"""Label frames with one angle closed (``sake_md.learn.closed_angle_frames``) outside a loop, for a fine-tune;
with ``--bonds``, frames with one bond stretched or compressed instead (``sake_md.learn.distorted_frames``).

    taskset -c 0 python md_runs/stability/close_angles.py ../shared/data/rmd17/rmd17_malonaldehyde_train_01.npz \
        --count 50 --offset runs/stability/learn_malonaldehyde_stretch50/oracle_offset.json \
        --out runs/stability/closed_malonaldehyde/closed.extxyz --record md_runs/stability/malonaldehyde/closed.json

The same frames a loop's round 0 with ``sake-md learn --close COUNT --seed 0`` draws (its generator, the bonds of
the training file's first frame), labelled by the PySCF oracle (PBE/def2-SVP) shifted by the offset a loop on the
same file measured (``oracle_offset.json``), or, for a molecule no loop has run on, measured here on
``--calibrate N`` frames of the file (``--offset`` is then where that measurement is written, and reused if present):

    taskset -c 0 python md_runs/stability/close_angles.py ../shared/data/rmd17/rmd17_aspirin_train_01.npz --bonds \
        --count 25 --calibrate 3 --offset runs/stability/distorted_aspirin/oracle_offset.json \
        --out runs/stability/distorted_aspirin/stretched.extxyz --record md_runs/stability/aspirin/stretched.json

``--kind H-C-H`` closes angles of that kind only (aspirin's methyl: 3 of its 32 angles, which the turns over kinds
would reach in one frame of seven):

    taskset -c 1 python md_runs/stability/close_angles.py ../shared/data/rmd17/rmd17_aspirin_train_01.npz \
        --kind H-C-H --count 12 --calibrate 3 --offset runs/stability/closed_aspirin/oracle_offset.json \
        --out runs/stability/closed_aspirin/closed.extxyz --record md_runs/stability/aspirin/closed.json

``--bonds`` draws frames as ``sake-md learn --stretch COUNT`` does (its round-0 generator). The frames stay in
runs/ (rMD17 positions with one atom moved); the record (``--record``: counts, CPU seconds, the closed pairs or moved
bonds and their energies above the file's highest) is ours.
"""

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np

from sake_md.data import read_dataset
from sake_md.files import atomic_write
from sake_md.learn import closed_angle_frames, distorted_frames, label, make_oracle, oracle_offset
from sake_md.md.bonds import find_bonds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the training file (one molecule)")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--offset", required=True, help="a loop's oracle_offset.json on the same file (with "
                        "--calibrate: where to write the one measured here)")
    parser.add_argument("--calibrate", type=int, default=0, help="measure the offset on this many frames of the file "
                        "when --offset does not exist yet")
    parser.add_argument("--bonds", action="store_true", help="one bond stretched or compressed, not an angle closed")
    parser.add_argument("--kind", help="close angles of this kind only, end-centre-end (e.g. H-C-H)")
    parser.add_argument("--oracle", default="pyscf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the labelled frames (extxyz)")
    parser.add_argument("--record", help="a JSON summary")
    args = parser.parse_args()
    if args.bonds and args.kind:
        parser.error("--kind chooses angles: it does not apply to --bonds")

    data = read_dataset(args.data)
    bonds = find_bonds(data.subset([0]).to_atoms()[0])
    if args.bonds:
        frames = distorted_frames(data, bonds, args.count, np.random.default_rng([args.seed, 0]))
    else:
        frames = closed_angle_frames(data, bonds, args.count, np.random.default_rng([args.seed, 0, 1]), kind=args.kind)
    oracle = make_oracle(args.oracle)
    path = Path(args.offset)
    if not path.exists() and not args.calibrate:
        raise SystemExit(f"{path} does not exist: give a loop's oracle_offset.json, or --calibrate N to measure one")
    offset = oracle_offset(path, data, lambda: oracle, args.calibrate, args.seed)
    labelled, cpu = label(frames, oracle, offset)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: ase.io.write(tmp, labelled, format="extxyz"))

    train = np.stack(data.positions)
    ceiling = float(data.energy.max())
    rows = []
    for atoms in labelled:
        if args.bonds:
            i, j = (int(v) for v in atoms.info["distorted_bond"])  # j moved along i→j
            held = np.linalg.norm(train[:, j] - train[:, i], axis=-1)
            row = {"bond": [i, j], "symbols": [atoms.get_chemical_symbols()[v] for v in (i, j)],
                   "length_A": float(atoms.get_distance(i, j)), "data_range_A": [float(held.min()), float(held.max())]}
        else:
            j, i, k = (int(v) for v in atoms.info["closed_angle"])  # j moved, turning about i toward k
            row = {"angle": [j, i, k], "symbols": [atoms.get_chemical_symbols()[v] for v in (j, i, k)],
                   "distance_A": float(atoms.get_distance(j, k)),
                   "data_closest_A": float(np.linalg.norm(train[:, j] - train[:, k], axis=-1).min())}
        rows.append({**row, "above_highest_eV": float(atoms.get_potential_energy() - ceiling),
                     "oracle_cpu_s": float(atoms.info["oracle_cpu_s"])})
    summary = {"data": args.data, "count": args.count, "labelled": len(labelled), "kind": args.kind,
               "oracle": args.oracle, "offset_eV": offset, "oracle_cpu_s": cpu, "seed": args.seed, "frames": rows}
    print(f"{args.out}: {len(labelled)} of {args.count} labelled, {cpu:.0f} CPU-s")
    if args.record:
        Path(args.record).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
