"""MD throughput: the batched replica engine (BAOAB Langevin) for 1, 8, 32, 128 ethanol replicas against
ASE's single-replica Langevin driving ``SAKECalculator``, on the same potential.

    python benchmarks/bench_md.py [--replicas 1,8,32,128] [--threads 2] [--dtype float32] [--min-time 3]
                                  [--device cpu|cuda] [--compile off|on|both] [--checkpoint CKPT] [--json out.json]
                                  [--hidden 8 --layers 2]

``--compile both`` (the default) measures eagerly first, then compiled (``sake_md.compile``: each replica
count is a new shape and compiles once, announced on stderr; torch's cache makes a second run start fast).

Without --checkpoint the potential is a random one of the MD17 configuration (the cost of a dense model
does not depend on its weights). Aggregate steps/s = replicas × steps / wall time. ASE is measured
before and after the engine, and the ratio uses the mean, so that a change in the machine's load shows.
On a machine shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads of a
niced process otherwise make 2 threads 10-40× slower than 1.
"""

import argparse
import json
import time

import ase.build
import numpy as np
import torch
from ase import units
from ase.md.langevin import Langevin

from sake_md import SAKECalculator, load_checkpoint
from sake_md.md.replicas import LangevinBAOAB, ReplicaState, SAKEForces, maxwell_boltzmann, simulate
from sake_md.md.run import thermalize
from sake_md.model import ModelConfig, SAKEPotential

DT = 0.5 * units.fs
FRICTION = 0.01 / units.fs


def timed(run, steps: int, min_time: float) -> float:
    """Seconds per step: one warm-up call of ``run(steps)``, then repeated calls until ``min_time`` has passed."""
    run(max(2, steps // 10))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        run(steps)
        done += steps
    return (time.perf_counter() - start) / done


def ase_steps_per_s(potential, min_time: float, device, compile_mode) -> float:
    atoms = ase.build.molecule("CH3CH2OH")
    thermalize(atoms, 300.0, np.random.default_rng(0))
    atoms.calc = SAKECalculator(potential, device=device, compile=compile_mode)
    dyn = Langevin(atoms, DT, temperature_K=300.0, friction=FRICTION, fixcm=False, rng=np.random.default_rng(0))
    return 1.0 / timed(dyn.run, 20, min_time)


def engine_steps_per_s(potential, replicas: int, min_time: float, device, compile_mode) -> float:
    """Aggregate replica-steps per second."""
    atoms_list = [ase.build.molecule("CH3CH2OH") for _ in range(replicas)]
    state = ReplicaState.from_atoms(atoms_list, torch.float64, device)
    generator = torch.Generator(device=device).manual_seed(0)
    maxwell_boltzmann(state, 300.0, generator)
    model = SAKEForces.for_atoms(potential, atoms_list, device, compile=compile_mode)
    integrator = LangevinBAOAB(DT, 300.0, FRICTION, generator)
    steps = max(2, 64 // replicas)

    def run(n):
        simulate(state, integrator, model, n)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return replicas / timed(run, steps, min_time)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,8,32,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both",
                    help="eager, compiled (sake_md.compile; each replica count compiles once), or both")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--checkpoint", help="a checkpoint instead of a random MD17-configuration potential")
    ap.add_argument("--hidden", type=int, help="a smaller random model for a smoke run")
    ap.add_argument("--layers", type=int, help="a smaller random model for a smoke run")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    size = {k: v for k, v in (("hidden", args.hidden), ("layers", args.layers)) if v}
    potential = load_checkpoint(args.checkpoint) if args.checkpoint else SAKEPotential([1, 6, 8], ModelConfig(**size))
    potential = potential.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    what = f"checkpoint {args.checkpoint}" if args.checkpoint else f"random weights, {size or 'MD17 configuration'}"
    print(f"torch {torch.__version__}, {args.threads} threads, {device}, {args.dtype}, ethanol (9 atoms), {what}")
    rows = {}
    for mode in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        name = "compiled" if mode else "eager"
        rows[name] = row = {"engine": {}}
        before = ase_steps_per_s(potential, args.min_time, device, mode)
        print(f"{'ASE Langevin, 1 replica, ' + name:40s} {before:10.1f} steps/s", flush=True)
        for n in (int(x) for x in args.replicas.split(",")):
            row["engine"][n] = engine_steps_per_s(potential, n, args.min_time, device, mode)
            print(f"{f'engine BAOAB, {n} replicas, {name}':40s} {row['engine'][n]:10.1f} replica-steps/s",
                  flush=True)
        after = ase_steps_per_s(potential, args.min_time, device, mode)
        print(f"{'ASE Langevin, 1 replica, ' + name + ' (again)':40s} {after:10.1f} steps/s")
        row["ase_langevin"] = 0.5 * (before + after)
        row["ase_langevin_before_after"] = [before, after]
    base = rows.get("eager", rows.get("compiled"))["ase_langevin"]
    for name, row in rows.items():
        for n, rate in row["engine"].items():
            print(f"  {name:8s} {n:4d} replicas: {rate:8.1f} replica-steps/s = {rate / base:5.1f}× ASE eager, "
                  f"{rate / row['ase_langevin']:5.1f}× ASE {name} ({rate / n:.1f} steps/s per replica)")
    for name, row in rows.items():
        if 32 in row["engine"]:
            print(f"{name} engine at 32 replicas: {row['engine'][32] / base:.1f}× ASE eager, "
                  f"{row['engine'][32] / row['ase_langevin']:.1f}× ASE {name} (target ≥ 8×)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "dtype": args.dtype, "device": str(device),
                       "checkpoint": args.checkpoint, **rows}, f, indent=1)


if __name__ == "__main__":
    main()
