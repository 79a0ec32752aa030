"""ms per energy+forces call, MD17 configuration, ethanol and aspirin, single and batch 32, eager and
compiled (``sake_md.compile``) side by side, with the compile's start-up cost.

    python benchmarks/bench_model.py [--variants sake,...] [--threads 1] [--device cpu|cuda]
        [--molecules ethanol,aspirin] [--dtypes float32,float64] [--batches 1,32]
        [--no-compile] [--no-warm-start] [--cache-dir DIR] [--json out.json] [--hidden 8 --layers 2]

Columns: ms per call (a B=32 call evaluates 32 molecules), the compiled speed-up, the time of the
dominant arithmetic alone on the same device (the C×C coefficient map forward and backward, "floor"),
and, per configuration, "cold s": the first compile with an empty compile cache (a fresh temporary
``TORCHINDUCTOR_CACHE_DIR`` unless ``--cache-dir`` is given), and "warm s": a new process compiling the
same shape from that cache, as a second ``sake-md run`` would ("warm proc s": that whole process, from
the start of Python to the first result), and "other s": a new process compiling another model of the same
architecture and shape (another energy scale and shift, as every trained model has its own) from that cache.
Compiling takes minutes per configuration on one CPU core;
``--batches 1 --dtypes float32 --molecules ethanol`` for a quick look.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import ase.build
import torch
import torch.utils.benchmark as tb

from sake_md.batch import atoms_to_batch
from sake_md.compile import CompiledPotential
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


SIZE = {}  # --hidden/--layers for smoke runs; empty: the MD17 configuration


def potential_for(variant: str, dtype, device, other: bool = False) -> SAKEPotential:
    """The benchmark's model; ``other``: another model of it (other weights and energy normalisation)."""
    torch.manual_seed(1 if other else 0)
    config = ModelConfig(variant=variant, **SIZE)
    scale, shift = (0.37, -4209.8) if other else (1.0, 0.0)
    potential = SAKEPotential([1, 6, 7, 8], config, scale, shift).to(device=device, dtype=dtype).eval()
    for p in potential.parameters():
        p.requires_grad_(False)
    return potential


def eager_call(potential, batch):
    def call():
        x = batch.positions.detach().requires_grad_()
        return potential.predict(batch.species, x, batch.mask)["forces"]

    return call


def compiled_call(compiled: CompiledPotential, batch):
    def call():
        return compiled(batch.species, batch.positions, batch.mask)["forces"]

    return call


def ms(call, min_run: float) -> float:
    call()
    t = tb.Timer(stmt="call()", globals={"call": call}).blocked_autorange(min_run_time=min_run)
    return t.median * 1e3


def matmul_floor(n_atoms, batch, dtype, device, layers=6, c=256, min_run=1.0):
    """ms for the dominant arithmetic alone: the C×C coefficient map, forward and backward, per layer.

    This is the floor a perfect implementation approaches; measuring it in the same run makes the
    ratio meaningful on a noisy machine.
    """
    a = torch.randn(batch * n_atoms * n_atoms, c, dtype=dtype, device=device)
    w = torch.randn(c, c, dtype=dtype, device=device)

    def call():
        for _ in range(layers):
            a @ w
            a @ w.t()

    return ms(call, min_run)


def first_compile_s(variant, mol, dtype, batch_size, device, other=False) -> tuple[CompiledPotential, object, float]:
    """A compiled potential for this configuration and the seconds its first call took (trace + compile)."""
    potential = potential_for(variant, dtype, device, other)
    batch = atoms_to_batch([structures(mol)] * batch_size, potential, dtype, device)
    compiled = CompiledPotential(potential, verbose=False)
    start = time.perf_counter()
    compiled(batch.species, batch.positions, batch.mask)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if compiled.eager_reason:
        raise SystemExit(f"compiling failed: {compiled.eager_reason}")
    return compiled, batch, seconds


def warm_start(variant, mol, dtype, batch_size, device, threads, other=False) -> tuple[float, float]:
    """(compile s, whole process s) of a fresh process that compiles this configuration (``other``: another model
    of it) from the cache."""
    spec = json.dumps([variant, mol, str(dtype).removeprefix("torch."), batch_size, str(device), threads, SIZE,
                       other])
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--warm-child", spec], capture_output=True, text=True,
                         env=os.environ.copy(), check=True)
    return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def warm_child(spec: str):
    variant, mol, dtype, batch_size, device, threads, size, other = json.loads(spec)
    torch.set_num_threads(threads)
    SIZE.update(size)
    print(first_compile_s(variant, mol, getattr(torch, dtype), batch_size, device, other)[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="sake")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--molecules", default="ethanol,aspirin")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--no-compile", action="store_true", help="eager only (the table of earlier versions)")
    ap.add_argument("--no-warm-start", action="store_true", help="skip the warm-start processes")
    ap.add_argument("--hidden", type=int, help="smaller model for a smoke run (default: MD17's 64)")
    ap.add_argument("--layers", type=int, help="smaller model for a smoke run (default: MD17's 6)")
    ap.add_argument("--cache-dir", help="compile cache to use (default: a fresh temporary one: cold compiles)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--warm-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warm_child:
        return warm_child(args.warm_child)
    SIZE.update({k: v for k, v in (("hidden", args.hidden), ("layers", args.layers)) if v})
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="sake_md_bench_inductor_")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, {device}, compile cache "
          f"{os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    header = (f"{'variant':16s} {'params':>8s} {'molecule':8s} {'dtype':8s} {'B':>3s} {'eager ms':>9s} "
              f"{'compiled ms':>11s} {'speed-up':>8s} {'floor ms':>9s} {'cold s':>7s} {'warm s':>7s} "
              f"{'warm proc s':>11s} {'other s':>7s}")
    print(header)
    rows = []
    for variant in args.variants.split(","):
        if variant not in SPATIAL_BLOCKS:
            raise SystemExit(f"unknown variant {variant}; known: {', '.join(SPATIAL_BLOCKS)}")
        for mol in args.molecules.split(","):
            for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
                for b in (int(x) for x in args.batches.split(",")):
                    row = measure(variant, mol, dtype, b, device, args)
                    rows.append(row)
                    print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "device": str(device), "rows": rows},
                      f, indent=1)


def measure(variant, mol, dtype, b, device, args) -> dict:
    potential = potential_for(variant, dtype, device)
    batch = atoms_to_batch([structures(mol)] * b, potential, dtype, device)
    row = {"variant": variant, "params": count_parameters(potential), "molecule": mol,
           "dtype": str(dtype).removeprefix("torch."), "batch": b,
           "eager_ms": ms(eager_call(potential, batch), args.min_run),
           "floor_ms": matmul_floor(len(structures(mol)), b, dtype, device, min_run=args.min_run)}
    if not args.no_compile:
        compiled, cbatch, row["cold_s"] = first_compile_s(variant, mol, dtype, b, device)
        row["compiled_ms"] = ms(compiled_call(compiled, cbatch), args.min_run)
        row["speedup"] = row["eager_ms"] / row["compiled_ms"]
        if not args.no_warm_start:
            row["warm_s"], row["warm_process_s"] = warm_start(variant, mol, dtype, b, device, args.threads)
            row["other_s"] = warm_start(variant, mol, dtype, b, device, args.threads, other=True)[0]
    return row


def format_row(r: dict) -> str:
    def f(key, width, fmt):
        return format(r[key], fmt).rjust(width) if key in r else "-".rjust(width)

    return (f"{r['variant']:16s} {r['params']:8d} {r['molecule']:8s} {r['dtype']:8s} {r['batch']:3d} "
            f"{f('eager_ms', 9, '.2f')} {f('compiled_ms', 11, '.2f')} {f('speedup', 8, '.2f')} "
            f"{f('floor_ms', 9, '.2f')} {f('cold_s', 7, '.1f')} {f('warm_s', 7, '.1f')} "
            f"{f('warm_process_s', 11, '.1f')} {f('other_s', 7, '.1f')}")


if __name__ == "__main__":
    main()
