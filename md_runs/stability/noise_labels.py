"""The noise lever, measured: how wrong a frame's labels become when its positions get Gaussian noise.

Noise on positions (every Cartesian component of every atom + N(0, σ²) Å) with the clean frame's labels kept
is the cheap version of "train where the data is not". This measures what those kept labels are worth: the
change of the forces, F(x + δ) − F(x), and of the energy beyond its first-order correction,
E(x + δ) − E(x) + F(x)·δ (what a Taylor-corrected energy label would still miss), against the potential's own
test errors. Two sources of the true change: a potential (cheap, many frames and σ), and the DFT oracle
(PySCF, rMD17's level of theory) on a few frames, which checks the potential's answer where it matters.

    python md_runs/stability/noise_labels.py ../shared/data/rmd17/rmd17_ethanol_test_01.npz \
        --model potentials/sake_ethanol.pt --sigmas 0.005 0.01 0.02 0.05 --frames 20 --dft-frames 3 \
        --out md_runs/stability/noise_labels_ethanol.json
"""

import argparse
import json
import time

import numpy as np

from sake_md.calculator import SAKECalculator
from sake_md.learn import make_oracle
from sake_md.md.reference import read_reference


def energy_forces(atoms, calc) -> tuple[float, np.ndarray]:
    """(E eV, F (N, 3) eV/Å) of ``atoms`` by ``calc``."""
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy()), atoms.get_forces().copy()


def label_errors(frames: list, noise: list, calc) -> dict:
    """Per σ: the forces' change (MAE and RMSE over components, meV/Å) and the energy's change beyond first order
    (MAE, meV) when each frame of ``frames`` moves by its ``noise`` (one (N, 3) array per frame)."""
    df, de, de0 = [], [], []
    for atoms, delta in zip(frames, noise, strict=True):
        e0, f0 = energy_forces(atoms, calc)
        moved = atoms.copy()
        moved.positions = atoms.positions + delta
        e1, f1 = energy_forces(moved, calc)
        df.append((f1 - f0).ravel())
        de.append(e1 - e0 + float(np.sum(f0 * delta)))  # E(x+δ) ≈ E(x) − F(x)·δ to first order
        de0.append(e1 - e0)
    df = np.concatenate(df) * 1e3
    return {"force_change_mae_meV_A": float(np.mean(np.abs(df))),
            "force_change_rmse_meV_A": float(np.sqrt(np.mean(df ** 2))),
            "energy_change_mae_meV": float(np.mean(np.abs(de0)) * 1e3),
            "energy_second_order_mae_meV": float(np.mean(np.abs(de)) * 1e3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", help="Labelled frames to add noise to (e.g. rMD17 test_01).")
    parser.add_argument("--model", required=True, help="The potential that stands in for the true change.")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05], help="Å")
    parser.add_argument("--frames", dest="n_frames", type=int, default=20)
    parser.add_argument("--dft-frames", type=int, default=3, help="Of those, checked with the oracle (0: none).")
    parser.add_argument("--oracle", default="pyscf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    reference = read_reference(args.frames)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(reference), size=args.n_frames, replace=False)
    frames = [reference.atoms(int(k)) for k in picks]
    calc = SAKECalculator(args.model, dtype="float64")
    result = {"frames": args.frames, "frame_indices": picks.tolist(), "model": args.model, "seed": args.seed,
              "oracle": args.oracle, "by_sigma": {}}
    for sigma in args.sigmas:
        noise = [rng.normal(0.0, sigma, size=a.positions.shape) for a in frames]
        row = {"model": label_errors(frames, noise, calc)}
        if args.dft_frames:
            start = time.process_time()
            row["dft"] = label_errors(frames[:args.dft_frames], noise[:args.dft_frames], make_oracle(args.oracle))
            row["dft"]["cpu_s"] = time.process_time() - start
            row["model_on_dft_frames"] = label_errors(frames[:args.dft_frames], noise[:args.dft_frames], calc)
        result["by_sigma"][str(sigma)] = row
        parts = [f"σ {sigma:.3f} Å: model ({args.n_frames} frames) ΔF MAE {row['model']['force_change_mae_meV_A']:.1f}"
                 f" RMSE {row['model']['force_change_rmse_meV_A']:.1f} meV/Å, ΔE beyond 1st order "
                 f"{row['model']['energy_second_order_mae_meV']:.2f} meV"]
        if args.dft_frames:
            parts.append(f"DFT ({args.dft_frames} frames) ΔF MAE {row['dft']['force_change_mae_meV_A']:.1f} "
                         f"(model on them {row['model_on_dft_frames']['force_change_mae_meV_A']:.1f}), ΔE beyond "
                         f"1st order {row['dft']['energy_second_order_mae_meV']:.2f} "
                         f"(model {row['model_on_dft_frames']['energy_second_order_mae_meV']:.2f}) meV")
        print("; ".join(parts), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
