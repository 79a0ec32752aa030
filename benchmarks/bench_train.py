"""Training throughput (samples/s): ethanol, MD17 configuration (H=64, K=4, 6 layers), batch 32.

One step = forward, forces by autograd, loss MAE(F) + w·MAE(E), double backward, the paper's optimiser
step — the trainer's own functions. Uses rMD17 ethanol when present, else rattled copies of ASE's ethanol
with random labels (the cost of the dense model does not depend on the values).

    python benchmarks/bench_train.py [--threads 2] [--batch-size 32] [--steps 10] [--dtype float32]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from sake_md.data import Dataset, labelled_batch, read_dataset, shuffled_order
from sake_md.model import ModelConfig, SAKEPotential
from sake_md.train import ForceModel, PaperAdam, TrainConfig, loss_from, residuals

RMD17 = Path(os.environ.get("SAKE_MD_RMD17", Path(__file__).resolve().parents[2] / "shared/data/rmd17"))


def ethanol_data(frames: int = 256) -> tuple[Dataset, str]:
    path = RMD17 / "rmd17_ethanol_train_01.npz"
    if path.exists():
        return read_dataset(path), str(path)
    import ase.build

    rng = np.random.default_rng(0)
    atoms = ase.build.molecule("CH3CH2OH")
    n = len(atoms)
    return Dataset([atoms.numbers.astype(np.int64)] * frames,
                   [atoms.positions + rng.normal(scale=0.05, size=(n, 3)) for _ in range(frames)],
                   rng.normal(size=frames) - 4209.0, [rng.normal(size=(n, 3)) for _ in range(frames)],
                   "generated"), "generated ethanol (ase.build.molecule, rattled)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    data, source = ethanol_data()
    cfg = TrainConfig(data=source, out="-", epochs=1, batch_size=args.batch_size, energy_weight=0.1)
    torch.manual_seed(0)
    potential = SAKEPotential(data.species, ModelConfig(), float(data.energy.std()), float(data.energy.mean()))
    potential = potential.to(dtype)
    model = ForceModel(potential)
    opt = PaperAdam(potential.parameters(), 1e-4, cfg.betas, cfg.eps, cfg.weight_decay, cfg.clip)
    order = shuffled_order(len(data), 0, 0)

    def step(k):
        idx = order[(k * args.batch_size) % len(data):][:args.batch_size]
        lb = labelled_batch(data, idx, potential.species_index, dtype)
        energy_model, forces = model(lb.batch.species, lb.batch.positions, lb.batch.mask)
        de, df = residuals(energy_model, forces, lb, potential)
        opt.zero_grad(set_to_none=True)
        loss_from(de, df, lb.batch.mask, cfg).backward()
        opt.step()
        return len(idx)

    for k in range(args.warmup):
        step(k)
    times, samples = [], 0
    for k in range(args.steps):
        t0 = time.perf_counter()
        samples += step(args.warmup + k)
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}, data: {source}")
    print(f"batch {args.batch_size}: median {per_step * 1e3:.0f} ms/step, {args.batch_size / per_step:.1f} samples/s "
          f"(mean over {args.steps} steps: {samples / sum(times):.1f} samples/s)")


if __name__ == "__main__":
    main()
