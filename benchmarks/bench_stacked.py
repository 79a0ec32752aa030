"""Runs trained together (``sake_md.stacked``) against one run alone: optimiser steps per second at the budget
recipe's batch of 4, MD17 configuration, on rMD17 ethanol (rattled ASE ethanol with EMT labels when the data
is absent; the cost does not depend on the values).

One step of one run alone = the trainer's compiled step (or eager), the optimiser and the weight average.
One stacked step = the same for K runs in one vmapped graph. Printed: steps/s of each, run-steps/s
(K x stacked steps/s) and the ratio to one run alone, measured in one process, interleaved.

    python benchmarks/bench_stacked.py --runs 6 --device cuda            # the study's GPU case
    python benchmarks/bench_stacked.py --runs 3 --threads 1 --no-compile  # CPU, eager
    python benchmarks/bench_stacked.py --runs 2 --hidden 8 --layers 2 --steps 3 --rounds 1  # smoke run
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sake_md import distributed
from sake_md.data import labelled_batch
from sake_md.devices import resolve_device
from sake_md.model import ModelConfig
from sake_md.stacked import StackedTraining
from sake_md.train import TrainConfig, Trainer

RMD17 = Path(os.environ.get("SAKE_MD_RMD17", Path(__file__).resolve().parents[2] / "shared/data/rmd17"))


def data_file(tmp: Path) -> str:
    path = RMD17 / "rmd17_ethanol_train_01.npz"
    if path.exists():
        return str(path)
    import ase.build
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(0)
    base, frames = ase.build.molecule("CH3CH2OH"), []
    for _ in range(200):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        frames.append((atoms.positions.copy(), atoms.get_potential_energy(), atoms.get_forces()))
    out = tmp / "ethanol_emt.npz"
    np.savez(out, nuclear_charges=base.numbers, coords=np.array([f[0] for f in frames]),
             energies=np.array([f[1] for f in frames]) * 23.0605, forces=np.array([f[2] for f in frames]) * 23.0605)
    return str(out)


def timed(fn, steps: int, device) -> float:
    """Seconds per call of ``fn`` (synchronised on CUDA)."""
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6, help="K, the runs trained together")
    ap.add_argument("--variant", default="sake")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = ModelConfig(variant=args.variant, hidden=args.hidden, layers=args.layers).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        data = data_file(Path(tmp))
        cfgs = [TrainConfig(data=data, out=f"{tmp}/run{k}", recipe="cpu", epochs=10, seed=k, model=model,
                            batch_size=args.batch_size, dtype=args.dtype, device=str(device), progress=False,
                            loss="mae", energy_per_atom=True, energy_weight=1.0, ema_decay=0.99,
                            compile=args.compile) for k in range(args.runs)]
        trainers = [Trainer(c, distributed.Context(), device) for c in cfgs]
        one = Trainer(cfgs[0], distributed.Context(), device)
        stack = StackedTraining(trainers, compile=args.compile)
        index, _ = stack.epoch_index(0)
        lb = labelled_batch(one.train_set, index[0, 0].cpu().numpy(), one.potential.species_index, one.dtype, device)

        def alone():
            one.step(lb, one.cfg)
            one.optimizer.step()
            one.average.update()

        def stacked():
            stack.step(stack.train_frames.take(index[0]), stack.cfg)

        t0 = time.perf_counter()
        alone()
        first_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        stacked()
        first_stacked = time.perf_counter() - t0
        rounds = []
        for _ in range(args.rounds):
            rounds.append((timed(alone, args.steps, device), timed(stacked, args.steps, device)))
        a, s = np.median([r[0] for r in rounds]), np.median([r[1] for r in rounds])
        result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  "torch": torch.__version__, "variant": args.variant, "runs": args.runs, "batch_size": args.batch_size,
                  "dtype": args.dtype, "threads": args.threads, "compile": args.compile, "data": data,
                  "first_step_s": {"alone": round(first_alone, 2), "stacked": round(first_stacked, 2)},
                  "ms_per_step": {"alone": round(1e3 * a, 3), "stacked": round(1e3 * s, 3)},
                  "run_steps_per_s": {"alone": round(1 / a, 1), "stacked": round(args.runs / s, 1)},
                  "speedup": round(args.runs * a / s, 2), "rounds": [[round(1e3 * x, 3) for x in r] for r in rounds]}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
