"""Training throughput per variant: samples/s of one optimiser step on ethanol, MD17 configuration.

One step = energies and forces with the graph kept, the paper's loss MAE(F) + 0.001·MAE(E), backward
through the forces (double backward), the paper's gradient transforms (coupled L2, elementwise clip)
and Adam. Targets are synthetic: the dense model's cost does not depend on the numbers.

    python benchmarks/bench_train_step.py [--variants sake,...] [--batch 32] [--dtype float32] [--threads 2]
"""

import argparse
import time

import ase.build
import numpy as np
import torch

from sake_md.batch import collate
from sake_md.model import ModelConfig, SAKEPotential, count_parameters
from sake_md.spatial import SPATIAL_BLOCKS


def ethanol_batch(potential, n, dtype, seed=0):
    atoms = ase.build.molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    frames = [atoms.positions + rng.normal(0, 0.05, atoms.positions.shape) for _ in range(n)]
    batch = collate([atoms.numbers] * n, frames, potential.species_index, dtype)
    energy = torch.randn(n, dtype=dtype)
    forces = torch.randn(n, len(atoms), 3, dtype=dtype)
    return batch, energy, forces


def step_fn(potential, batch, energy, forces, weight_decay=1e-5, clip=1.0):
    optimizer = torch.optim.Adam(potential.parameters(), lr=1e-4)

    def step():
        out = potential.predict(batch.species, batch.positions.clone(), batch.mask, training=True)
        loss = (out["forces"] - forces).abs().mean() + 1e-3 * (out["energy_model"] - energy).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in potential.parameters():
                g = torch.zeros_like(p) if p.grad is None else p.grad  # e.g. the last layer's unused Δv path
                p.grad = (g + weight_decay * p).clamp_(-clip, clip)
        optimizer.step()

    return step


def median_step_seconds(step, min_time: float, min_steps: int = 3) -> float:
    step()  # warm-up
    times = []
    while len(times) < min_steps or sum(times) < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(SPATIAL_BLOCKS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} threads, ethanol, batch {args.batch}, {args.dtype}")
    print(f"{'variant':16s} {'params':>9s} {'s/step':>8s} {'samples/s':>10s}")
    for variant in args.variants.split(","):
        if variant not in SPATIAL_BLOCKS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(SPATIAL_BLOCKS)}")
        torch.manual_seed(0)
        potential = SAKEPotential([1, 6, 7, 8], ModelConfig(variant=variant)).to(dtype).train()
        batch, energy, forces = ethanol_batch(potential, args.batch, dtype)
        t = median_step_seconds(step_fn(potential, batch, energy, forces), args.min_time)
        print(f"{variant:16s} {count_parameters(potential):9d} {t:8.3f} {args.batch / t:10.1f}", flush=True)


if __name__ == "__main__":
    main()
