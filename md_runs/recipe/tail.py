"""Where a potential's force error lives: the worst test frames, and whether they are unusual geometries.

    python md_runs/recipe/tail.py CKPT --data TEST.npz [--train TRAIN.npz] [--top 10]
    (TEST.npz e.g. ../shared/data/rmd17/rmd17_ethanol_test_01.npz)

Prints (and with --json writes) the share of the squared force error held by the worst frames, and for
each of them: its energy percentile in the test set, its bond lengths against the range of the training
frames (bonds: ASE natural cutoffs of the first frame), its most unusual bond in standard deviations, and how
concentrated its error is (the share of the frame's squared error on its worst atom).
"""

import argparse
import json

import numpy as np
from ase.data import chemical_symbols
from ase.neighborlist import natural_cutoffs, neighbor_list

from sake_md.data import read_dataset
from sake_md.evaluate import evaluate


def bonds_of(numbers, positions):
    """Bonded pairs (i < j) of one frame by ASE's natural cutoffs."""
    from ase import Atoms

    atoms = Atoms(numbers=numbers, positions=positions)
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms))
    return sorted({(int(a), int(b)) for a, b in zip(i, j, strict=True) if a < b})


def bond_lengths(positions: np.ndarray, bonds) -> np.ndarray:
    """Shape: (M, N, 3) -> (M, n_bonds)."""
    a, b = np.array(bonds).T
    return np.linalg.norm(positions[:, b] - positions[:, a], axis=-1)


def analyse(checkpoint, data_path, train_path=None, top: int = 10) -> dict:
    report, data, energy, forces = evaluate(checkpoint, data_path, return_predictions=True, n_bootstrap=10)
    err = np.stack([f - r for f, r in zip(forces, data.forces, strict=True)])  # (M, N, 3) eV/Å
    per_frame = (err ** 2).sum((1, 2))
    order = np.argsort(per_frame)[::-1]
    numbers = data.numbers[0]
    positions = np.stack(data.positions)
    bonds = bonds_of(numbers, positions[0])
    reference = np.stack(read_dataset(train_path).positions) if train_path else positions
    ref_lengths = bond_lengths(reference, bonds)
    mu, sd = ref_lengths.mean(0), ref_lengths.std(0)
    lengths = bond_lengths(positions, bonds)
    z = (lengths - mu) / sd
    energy_rank = np.argsort(np.argsort(data.energy)) / (len(data) - 1)
    frames = []
    for m in order[:top]:
        atom_sq = (err[m] ** 2).sum(-1)
        k = int(np.argmax(np.abs(z[m])))
        a, b = bonds[k]
        frames.append({
            "frame": int(m), "share_of_squared_error": float(per_frame[m] / per_frame.sum()),
            "force_rmse_meV_A": 1e3 * float(np.sqrt(per_frame[m] / err[m].size)),
            "energy_percentile": float(100 * energy_rank[m]),
            "energy_error_meV": 1e3 * float(energy[m] - data.energy[m]),
            "most_unusual_bond": f"{chemical_symbols[numbers[a]]}{a}-{chemical_symbols[numbers[b]]}{b}",
            "bond_length_A": float(lengths[m, k]), "bond_z": float(z[m, k]),
            "bond_outside_train_range": bool(lengths[m, k] < ref_lengths[:, k].min()
                                             or lengths[m, k] > ref_lengths[:, k].max()),
            "worst_atom": f"{chemical_symbols[numbers[int(np.argmax(atom_sq))]]}{int(np.argmax(atom_sq))}",
            "worst_atom_share": float(atom_sq.max() / atom_sq.sum())})
    shares = np.cumsum(per_frame[order]) / per_frame.sum()
    typical_z = np.abs(z).max(1)
    return {"checkpoint": str(checkpoint), "data": str(data_path), "frames": len(data),
            "force_mae_meV_A": report["force_mae_meV_A"]["value"],
            "force_rmse_meV_A": report["force_rmse_meV_A"]["value"],
            "rmse_over_mae": report["force_rmse_meV_A"]["value"] / report["force_mae_meV_A"]["value"],
            "share_of_worst": {str(n): float(shares[n - 1]) for n in (1, 5, 10, 50) if n <= len(data)},
            "median_max_bond_z_all_frames": float(np.median(typical_z)), "worst": frames}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--train", help="Training file whose bond-length range is the reference [the test file].")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", help="Write the analysis here.")
    args = ap.parse_args()
    result = analyse(args.checkpoint, args.data, args.train, args.top)
    print(f"{result['checkpoint']}: force MAE {result['force_mae_meV_A']:.2f}, RMSE {result['force_rmse_meV_A']:.2f} "
          f"meV/Å (RMSE/MAE {result['rmse_over_mae']:.2f})")
    print("share of the squared force error in the worst n frames: "
          + ", ".join(f"{n}: {100 * s:.0f}%" for n, s in result["share_of_worst"].items()))
    print(f"median over all frames of the most unusual bond: {result['median_max_bond_z_all_frames']:.1f} σ")
    print(f"{'frame':>6s} {'share':>6s} {'F RMSE':>8s} {'E pct':>6s} {'dE meV':>8s} {'bond':>10s} {'length':>7s} "
          f"{'z':>6s} {'outside':>7s} {'worst atom':>10s} {'its share':>9s}")
    for f in result["worst"]:
        print(f"{f['frame']:6d} {100 * f['share_of_squared_error']:5.1f}% {f['force_rmse_meV_A']:8.1f} "
              f"{f['energy_percentile']:6.1f} {f['energy_error_meV']:8.1f} {f['most_unusual_bond']:>10s} "
              f"{f['bond_length_A']:7.3f} {f['bond_z']:6.1f} {str(f['bond_outside_train_range']):>7s} "
              f"{f['worst_atom']:>10s} {100 * f['worst_atom_share']:8.0f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
