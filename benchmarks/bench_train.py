"""Training throughput (samples/s): ethanol, MD17 configuration (H=64, K=4, 6 layers), batch 32.

One step = forward, forces by autograd, loss MAE(F) + w·MAE(E), double backward, the paper's optimiser
step — the trainer's own functions. Uses rMD17 ethanol when present, else rattled copies of ASE's ethanol
with random labels (the cost of the dense model does not depend on the values).

``--compile`` also runs the compiled step (``sake_md.compile_train``: forward, forces, loss and
gradients as one graph) and reports eager and compiled side by side, in interleaved rounds, with the
compile time of the first compiled step (cold unless torch's on-disk cache already holds the graph).

    python benchmarks/bench_train.py [--threads 2] [--batch-size 32] [--steps 10] [--dtype float32]
    python benchmarks/bench_train.py --compile --threads 1 --batch-size 32 [--device cuda]
    python benchmarks/bench_train.py --compile --hidden 8 --layers 2 --steps 2 --rounds 1   # smoke run
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from sake_md.data import Dataset, labelled_batch, read_dataset, shuffled_order
from sake_md.model import ModelConfig, SAKEPotential
from sake_md.train import EnergyAndForces, PaperAdam, TrainConfig, loss_from, residuals

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


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="Timed steps per round and mode.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved eager/compiled rounds (with --compile).")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda.")
    ap.add_argument("--compile", action="store_true", help="Also time the compiled step, side by side.")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--radial", type=int, default=50)
    return ap.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(args.threads))
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    data, source = ethanol_data()
    cfg = TrainConfig(data=source, out="-", epochs=1, batch_size=args.batch_size, energy_weight=0.1)
    torch.manual_seed(0)
    config = ModelConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, radial=args.radial)
    potential = SAKEPotential(data.species, config, float(data.energy.std()), float(data.energy.mean()))
    potential = potential.to(device=device, dtype=dtype)
    model = EnergyAndForces(potential)
    opt = PaperAdam(potential.parameters(), 1e-4, cfg.betas, cfg.eps, cfg.weight_decay, cfg.clip)
    order = shuffled_order(len(data), 0, 0)
    batch_list = []
    for k in range(max(1, len(data) // args.batch_size)):
        idx = order[k * args.batch_size:(k + 1) * args.batch_size]
        batch_list.append(labelled_batch(data, idx, potential.species_index, dtype, device))

    def eager(lb):
        energy_model, forces = model(lb.batch.species, lb.batch.positions, lb.batch.mask)
        de, df = residuals(energy_model, forces, lb, potential)
        opt.zero_grad(set_to_none=True)
        loss_from(de, df, lb.batch.mask, cfg).backward()

    steps = {"eager": eager}
    compiled = None
    if args.compile:
        from sake_md.compile_train import CompiledTrainStep

        compiled = CompiledTrainStep(potential, args.batch_size, int(data.n_atoms.max()), verbose=True)
        steps["compiled"] = lambda lb: compiled(lb, cfg)

    def timed(step, k) -> float:
        lb = batch_list[k % len(batch_list)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(lb)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = {name: timed(step, 0) for name, step in steps.items()}  # includes compiling
    for step in steps.values():
        for k in range(args.warmup):
            timed(step, k + 1)
    times = {name: [] for name in steps}
    for _ in range(args.rounds if args.compile else 1):
        for name, step in steps.items():
            times[name] += [timed(step, args.warmup + 1 + k) for k in range(args.steps)]

    print(f"torch {torch.__version__}, {args.threads} threads, {device}, {args.dtype}, data: {source}, "
          f"model H={args.hidden} K={args.heads} layers={args.layers} radial={args.radial}")
    per_step = {name: float(np.median(t)) for name, t in times.items()}
    for name, t in per_step.items():
        print(f"{name:9s} batch {args.batch_size}: median {t * 1e3:.1f} ms/step, {args.batch_size / t:.1f} samples/s "
              f"(over {len(times[name])} steps)")
    if compiled is not None:
        failed = " (compile FAILED: eager fallback)" if compiled.failed else ""
        print(f"compiled/eager speed-up: {per_step['eager'] / per_step['compiled']:.2f}x{failed}")
        print(f"first compiled step: {first['compiled']:.1f} s (trace + compile; cold unless torch's cache holds "
              f"this graph), first eager step: {first['eager']:.2f} s")


if __name__ == "__main__":
    main()
