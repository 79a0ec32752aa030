"""A committee's cost: the stacked call (members ``vmap``-ed, one call per batch) against one
``SAKECalculator`` call per member, on ethanol batches, with random weights of a given configuration.

    python benchmarks/bench_committee.py [--members 3] [--batch 1,32] [--hidden 64 --layers 6]
                                         [--device cpu] [--dtype float32] [--min-time 2] [--json out.json]

Prints ms per evaluation (energies and forces of every member) and the largest difference between the
two ways (they must agree). On a shared machine the ratio is the number to look at, not the times.
"""

import argparse
import json
import time

import ase.build
import numpy as np
import torch

from sake_md import CommitteeCalculator, SAKECalculator
from sake_md.model import ModelConfig, SAKEPotential


def timed(call, min_time: float) -> float:
    """Seconds per call: one warm-up call, then repeated calls until ``min_time`` has passed."""
    call()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        call()
        done += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / done


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    config = ModelConfig(hidden=args.hidden, layers=args.layers)
    potentials = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        potentials.append(SAKEPotential([1, 6, 8], config))
    committee = CommitteeCalculator(potentials, device=args.device, dtype=args.dtype)
    singles = [SAKECalculator(p, device=args.device, dtype=args.dtype) for p in potentials]
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        frames = [ase.build.molecule("CH3CH2OH") for _ in range(batch)]
        for k, atoms in enumerate(frames):
            atoms.rattle(0.05, seed=k)
        stacked = committee.predict(frames, batch_size=batch)
        looped = [calc.predict(frames, batch_size=batch) for calc in singles]
        diff = max(np.abs(s["committee_forces"][m] - looped[m][b]["forces"]).max()
                   for b, s in enumerate(stacked) for m in range(args.members))
        t_stacked = timed(lambda: committee.predict(frames, batch_size=batch), args.min_time)  # noqa: B023
        t_loop = timed(lambda: [c.predict(frames, batch_size=batch) for c in singles], args.min_time)  # noqa: B023
        rows.append({"batch": batch, "members": args.members, "stacked_ms": 1e3 * t_stacked,
                     "loop_ms": 1e3 * t_loop, "loop_over_stacked": t_loop / t_stacked, "max_force_diff": diff})
        print(f"B={batch:4d} M={args.members}: stacked {1e3 * t_stacked:8.2f} ms, loop {1e3 * t_loop:8.2f} ms "
              f"(loop/stacked {t_loop / t_stacked:.2f}); max |ΔF| {diff:.2e} eV/Å")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "dtype": args.dtype, "hidden": args.hidden, "layers": args.layers,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
