"""Can PySCF stand in for rMD17's DFT (PBE/def2-SVP) as the labelling oracle of a data loop? (issue 22)

Computes PBE/def2-SVP energies and forces (density fitting) for frames of an rMD17
file and compares them with the file's labels: force MAE/RMSE/max over all components, and the energy
difference, whose mean is the constant offset between the two codes (removed when labelling) and whose
spread after that offset is what matters. Writes a JSON record.

    taskset -c 1 python md_runs/stability/oracle_check.py ../shared/data/rmd17/rmd17_ethanol_test_01.npz \
        --frames 20 --out md_runs/stability/oracle_check_ethanol.json
"""

import argparse
import json
import os
import time

import numpy as np
from ase.units import Bohr, Hartree, kcal, mol


def pbe_def2svp(numbers, positions, grid_level: int = 5, auxbasis: str = "def2-universal-jfit"):
    """Energy (eV) and forces (eV/Å) of one molecule, PBE/def2-SVP with density fitting."""
    from pyscf import dft, gto

    mol_ = gto.M(atom=[(int(z), tuple(x)) for z, x in zip(numbers, positions, strict=True)], unit="Angstrom",
                 basis="def2-svp", verbose=0)
    mf = dft.RKS(mol_).density_fit(auxbasis=auxbasis)
    mf.xc, mf.conv_tol, mf.grids.level = "pbe,pbe", 1e-10, grid_level
    energy = mf.kernel()
    if not mf.converged:
        raise RuntimeError("SCF did not converge")
    gradient = mf.nuc_grad_method().kernel()
    return energy * Hartree, -gradient * Hartree / Bohr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=5, help="PySCF's DFT grid level")
    ap.add_argument("--auxbasis", default="def2-universal-jfit", help="density-fitting basis")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with np.load(args.data) as f:
        z, coords, energies, forces = f["nuclear_charges"], f["coords"], f["energies"], f["forces"]
    frames = sorted(np.random.default_rng(args.seed).choice(len(coords), args.frames, replace=False).tolist())
    kcal_mol = kcal / mol
    rows, cpu0 = [], time.process_time()
    for k in frames:
        t0 = time.process_time()
        e, fr = pbe_def2svp(z, coords[k], args.grid, args.auxbasis)
        rows.append({"frame": k, "energy_eV": e, "ref_energy_eV": float(energies[k]) * kcal_mol,
                     "force_diff": (fr - forces[k] * kcal_mol).tolist(), "cpu_s": time.process_time() - t0})
        print(f"frame {k}: {rows[-1]['cpu_s']:.1f} CPU-s, |ΔF|max {np.abs(rows[-1]['force_diff']).max() * 1e3:.2f} "
              f"meV/Å", flush=True)
    df = np.array([r["force_diff"] for r in rows]) * 1e3
    de = np.array([r["energy_eV"] - r["ref_energy_eV"] for r in rows]) * 1e3
    record = {"data": os.path.basename(args.data), "frames": frames,
              "method": f"PBE/def2-SVP, density fitting {args.auxbasis}", "grid_level": args.grid, "conv_tol": 1e-10,
              "force_mae_meV_A": float(np.abs(df).mean()), "force_rmse_meV_A": float(np.sqrt((df ** 2).mean())),
              "force_max_meV_A": float(np.abs(df).max()),
              "energy_offset_meV": float(de.mean()), "energy_std_after_offset_meV": float(de.std(ddof=1)),
              "energy_std_after_offset_meV_per_atom": float(de.std(ddof=1) / len(z)),
              "cpu_s_per_frame": float(np.mean([r["cpu_s"] for r in rows])), "cpu_s": time.process_time() - cpu0,
              "per_frame": [{k: v for k, v in r.items() if k != "force_diff"} for r in rows]}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps({k: v for k, v in record.items() if k not in ("per_frame", "frames")}, indent=1))


if __name__ == "__main__":
    main()
