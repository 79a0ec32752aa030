"""The cost table of the ablation family, in one run: parameters, ms per energy+forces call (ethanol and
aspirin, batch 1 and 32, float32 and float64) and training samples/s (ethanol, batch 32, float32).

A training step is the trainer's own (``EnergyAndForces``, ``residuals``, ``loss_from``, ``PaperAdam``: forces
with the graph kept, MAE(F) + w·MAE(E), double backward, coupled L2 + clip + Adam) on the data of
``bench_train.py`` (rMD17 ethanol when present).

On a shared machine wall-clock time measures the neighbours' load, so the default clock is this
process's CPU time with one thread (``--clock wall --threads 2`` for a quiet machine). Measurements
are also interleaved over variants in rounds and the fastest round is kept, so that what load remains
hits every variant alike.

    python benchmarks/bench_variants.py [--variants sake,...] [--rounds 3] [--threads 1] [--clock cpu]
"""

import argparse
import time

import numpy as np
import torch
from bench_model import structures
from bench_train import ethanol_data

from sake_md.batch import atoms_to_batch
from sake_md.data import labelled_batch
from sake_md.model import ModelConfig, SAKEPotential, count_parameters
from sake_md.spatial import SPATIAL_BLOCKS
from sake_md.train import EnergyAndForces, PaperAdam, TrainConfig, loss_from, residuals

CASES = [(mol, batch, dtype) for mol in ("ethanol", "aspirin") for batch in (1, 32)
         for dtype in (torch.float32, torch.float64)]


def energy_forces_call(potential: SAKEPotential, mol: str, batch_size: int, dtype):
    p = potential.to(dtype)
    batch = atoms_to_batch([structures(mol)] * batch_size, p, dtype, "cpu")

    def call():
        p.predict(batch.species, batch.positions.detach().requires_grad_(), batch.mask)

    return call


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def training_step(variant: str, batch_size: int = 32, dtype=torch.float32):
    """One optimiser step of the trainer on ``batch_size`` ethanol frames (the same frames every call)."""
    data, source = ethanol_data()
    cfg = TrainConfig(data=source, out="-", epochs=1, batch_size=batch_size)
    torch.manual_seed(0)
    potential = SAKEPotential(data.species, ModelConfig(variant=variant), float(data.energy.std()),
                              float(data.energy.mean())).to(dtype)
    model = EnergyAndForces(potential)
    opt = PaperAdam(potential.parameters(), 1e-4, cfg.betas, cfg.eps, cfg.weight_decay, cfg.clip)
    lb = labelled_batch(data, np.arange(batch_size), potential.species_index, dtype)

    def step():
        energy_model, forces = model(lb.batch.species, lb.batch.positions.detach(), lb.batch.mask)
        de, df = residuals(energy_model, forces, lb, potential)
        opt.zero_grad(set_to_none=True)
        loss_from(de, df, lb.batch.mask, cfg).backward()
        opt.step()

    return step


def seconds_per_call(call, min_time: float, clock=time.process_time) -> float:
    """Mean over as many calls as fill ``min_time`` on ``clock`` (at least one)."""
    calls, t0 = 0, clock()
    while calls == 0 or clock() - t0 < min_time:
        call()
        calls += 1
    return (clock() - t0) / calls


def build(variant: str, dtype=torch.float32) -> SAKEPotential:
    """An evaluation-mode potential (no parameter gradients), 4 elements."""
    torch.manual_seed(0)
    return SAKEPotential([1, 6, 7, 8], ModelConfig(variant=variant)).to(dtype).eval().requires_grad_(False)


def measure(variants, rounds: int, min_time: float, clock) -> dict:
    """{(variant, case): fastest seconds per call}, case a CASES entry or "train"."""
    calls = {}
    for v in variants:
        for mol, b, dtype in CASES:
            calls[v, (mol, b, dtype)] = energy_forces_call(build(v, dtype), mol, b, dtype)
        calls[v, "train"] = training_step(v)
    for call in calls.values():
        call()  # warm-up: allocator, first-call dispatch
    best = {}
    for r in range(rounds):
        for key, call in calls.items():
            t = seconds_per_call(call, min_time, clock)
            best[key] = min(best.get(key, np.inf), t)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return best


def table(variants, best) -> str:
    head = ["variant", "parameters"] + [f"{mol} B={b} {str(d)[6:]}" for mol, b, d in CASES] + ["train samples/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        cells = [f"`{v}`", f"{count_parameters(build(v)):,}"]
        cells += [f"{1e3 * best[v, case]:.1f}" for case in CASES]
        cells.append(f"{32 / best[v, 'train']:.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(SPATIAL_BLOCKS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of calls per measurement and round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in SPATIAL_BLOCKS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(SPATIAL_BLOCKS)}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, best of {args.rounds} "
          "interleaved rounds; E+F columns: ms per call (a call of B=32 evaluates 32 molecules)")
    print(table(variants, measure(variants, args.rounds, args.min_time, CLOCKS[args.clock])))


if __name__ == "__main__":
    main()
