"""ms per energy+forces call, MD17 configuration, ethanol and aspirin, single and batch 32.

    python benchmarks/bench_model.py [--variants sake,...] [--threads 2]
"""

import argparse

import ase.build
import torch
import torch.utils.benchmark as tb

from sake_md.batch import atoms_to_batch
from sake_md.model import ModelConfig, SAKEPotential, count_parameters
from sake_md.spatial import SPATIAL_BLOCKS


def aspirin():
    """A 21-atom C9H8O4 (aspirin's formula). The dense model's cost does not depend on the geometry."""
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(0)
    return Atoms(numbers=[6] * 9 + [1] * 8 + [8] * 4, positions=rng.uniform(0, 6, (21, 3)))


def structures(name):
    return ase.build.molecule("CH3CH2OH") if name == "ethanol" else aspirin()


def time_call(potential, atoms_list, dtype, min_run=1.0):
    p = potential.to(dtype)
    batch = atoms_to_batch(atoms_list, p, dtype, "cpu")

    def call():
        x = batch.positions.detach().requires_grad_()
        out = p.predict(batch.species, x, batch.mask)
        return out["forces"]

    call()
    t = tb.Timer(stmt="call()", globals={"call": call}).blocked_autorange(min_run_time=min_run)
    return t.median * 1e3


def matmul_floor(n_atoms, batch, dtype, layers=6, c=256, min_run=1.0):
    """ms for the dominant arithmetic alone: the C×C coefficient map, forward and backward, per layer.

    This is the floor a perfect implementation approaches; measuring it in the same run makes the
    ratio meaningful on a noisy machine.
    """
    a = torch.randn(batch * n_atoms * n_atoms, c, dtype=dtype)
    w = torch.randn(c, c, dtype=dtype)

    def call():
        for _ in range(layers):
            a @ w
            a @ w.t()

    t = tb.Timer(stmt="call()", globals={"call": call}).blocked_autorange(min_run_time=min_run)
    return t.median * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="sake")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'variant':16s} {'params':>8s} {'molecule':8s} {'dtype':8s} {'ms/call B=1':>12s} {'ms/mol B=32':>12s}"
          f" {'floor B=1':>10s} {'floor/mol B=32':>15s}")
    for variant in args.variants.split(","):
        assert variant in SPATIAL_BLOCKS, variant
        potential = SAKEPotential([1, 6, 7, 8], ModelConfig(variant=variant)).eval()
        for p in potential.parameters():
            p.requires_grad_(False)
        n = count_parameters(potential)
        for mol in ("ethanol", "aspirin"):
            atoms = structures(mol)
            for dtype in (torch.float32, torch.float64):
                t1 = time_call(potential, [atoms], dtype, args.min_run)
                t32 = time_call(potential, [atoms] * 32, dtype, args.min_run) / 32
                f1 = matmul_floor(len(atoms), 1, dtype, min_run=args.min_run)
                f32 = matmul_floor(len(atoms), 32, dtype, min_run=args.min_run) / 32
                row = f"{variant:16s} {n:8d} {mol:8s} {str(dtype)[6:]:8s} {t1:12.2f} {t32:12.2f}"
                print(f"{row} {f1:10.2f} {f32:15.2f}", flush=True)


if __name__ == "__main__":
    main()
