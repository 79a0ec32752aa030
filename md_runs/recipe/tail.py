"""Where a potential's force error lives: the worst test frames, and whether they are unusual geometries.

    python md_runs/recipe/tail.py CKPT --data TEST.npz [--train TRAIN.npz] [--top 10] [--json OUT.json]

Prints (and with --json writes) the share of the squared force error held by the worst frames, and for
each of them: its energy percentile in the test set, its bond lengths against the range of the training
frames (bonds: ASE natural cutoffs of the first frame), its most unusual bond in standard deviations, and how
concentrated its error is (the share of the frame's squared error on its worst atom).
"""

import argparse
import json

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from sake_md.data import read_dataset
from sake_md.evaluate import evaluate
from sake_md.md.bonds import bond_lengths, find_bonds


def bonds_of(numbers, positions):
    """Bonded pairs (i < j) of one frame, with the MD stability protocol's criterion."""
    return [tuple(map(int, pair)) for pair in find_bonds(Atoms(numbers=numbers, positions=positions))]


def analyse(checkpoint, data_path, train_path=None, top: int = 10) -> dict:
    report, data, energy, forces = evaluate(checkpoint, data_path, return_predictions=True, n_bootstrap=10)
    err = np.stack([f - r for f, r in zip(forces, data.forces, strict=True)])  # (M, N, 3) eV/Å
    per_frame = (err ** 2).sum((1, 2))
    order = np.argsort(per_frame)[::-1]
    numbers = data.numbers[0]
    positions = np.stack(data.positions)
    bonds = bonds_of(numbers, positions[0])
    reference = np.stack(read_dataset(train_path).positions) if train_path else positions
    ref_lengths = bond_lengths(reference, np.array(bonds))
    mu, sd = ref_lengths.mean(0), ref_lengths.std(0)
    lengths = bond_lengths(positions, np.array(bonds))
    z = (lengths - mu) / sd
    iu = np.triu_indices(len(numbers), 1)
    dist = np.linalg.norm(positions[:, iu[1]] - positions[:, iu[0]], axis=-1)  # (M, pairs): angles show here too
    ref_dist = np.linalg.norm(reference[:, iu[1]] - reference[:, iu[0]], axis=-1)
    pair_z = (dist - ref_dist.mean(0)) / ref_dist.std(0)
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
            "most_unusual_pair": _pair_label(numbers, iu, int(np.argmax(np.abs(pair_z[m])))),
            "pair_distance_A": float(dist[m, np.argmax(np.abs(pair_z[m]))]),
            "pair_z": float(pair_z[m, np.argmax(np.abs(pair_z[m]))]),
            "worst_atom": f"{chemical_symbols[numbers[int(np.argmax(atom_sq))]]}{int(np.argmax(atom_sq))}",
            "worst_atom_share": float(atom_sq.max() / atom_sq.sum())})
    max_pair_z = np.abs(pair_z).max(1)
    shares = np.cumsum(per_frame[order]) / per_frame.sum()
    typical_z = np.abs(z).max(1)
    return {"checkpoint": str(checkpoint), "data": str(data_path), "frames": len(data),
            "force_mae_meV_A": report["force_mae_meV_A"]["value"],
            "force_rmse_meV_A": report["force_rmse_meV_A"]["value"],
            "rmse_over_mae": report["force_rmse_meV_A"]["value"] / report["force_mae_meV_A"]["value"],
            "share_of_worst": {str(n): float(shares[n - 1]) for n in (1, 5, 10, 50) if n <= len(data)},
            "median_max_bond_z_all_frames": float(np.median(typical_z)),
            "median_max_pair_z_all_frames": float(np.median(max_pair_z)), "worst": frames}


def _pair_label(numbers, iu, k: int) -> str:
    a, b = int(iu[0][k]), int(iu[1][k])
    return f"{chemical_symbols[numbers[a]]}{a}-{chemical_symbols[numbers[b]]}{b}"


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
    print(f"median over all frames of the most unusual bond: {result['median_max_bond_z_all_frames']:.1f} σ, "
          f"of the most unusual interatomic distance: {result['median_max_pair_z_all_frames']:.1f} σ")
    print(f"{'frame':>6s} {'share':>6s} {'F RMSE':>8s} {'E pct':>6s} {'dE meV':>8s} {'bond':>10s} {'length':>7s} "
          f"{'z':>6s} {'outside':>7s} {'pair':>10s} {'dist':>6s} {'z':>5s} {'worst atom':>10s} {'its share':>9s}")
    for f in result["worst"]:
        print(f"{f['frame']:6d} {100 * f['share_of_squared_error']:5.1f}% {f['force_rmse_meV_A']:8.1f} "
              f"{f['energy_percentile']:6.1f} {f['energy_error_meV']:8.1f} {f['most_unusual_bond']:>10s} "
              f"{f['bond_length_A']:7.3f} {f['bond_z']:6.1f} {str(f['bond_outside_train_range']):>7s} "
              f"{f['most_unusual_pair']:>10s} {f['pair_distance_A']:6.2f} {f['pair_z']:5.1f} "
              f"{f['worst_atom']:>10s} {100 * f['worst_atom_share']:8.0f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
