"""Energy + forces + stress of periodic copper from ~100 to ~11,000 atoms: time per call, peak memory,
the neighbour list's share of the time, and how the time grows with N (sparse mode, MD17 configuration).

    python benchmarks/bench_periodic.py                       # 108 ... 10,976 atoms, float32, 2 threads
    python benchmarks/bench_periodic.py --sizes 108,256 --repeats 1 --hidden 16 --layers 2   # smoke run
    python benchmarks/bench_periodic.py --device cuda --json bench_periodic.json
    python benchmarks/bench_periodic.py --mace-model model.model   # MACE's calculator on the same structures

Each size runs in its own process, so the peak memory it reports is that size's (CPU: the process's
peak resident set, which includes ~0.3-0.5 GB of Python and PyTorch, shown as "baseline"; CUDA:
torch.cuda.max_memory_allocated). The structures are rattled fcc Cu supercells (a = 3.61 Å, rattle
0.05 Å, seed 0); the model has random weights (cost does not depend on the weights). Times are the
median of ``--repeats`` calls after one warm-up call; "neighbour list" is matscipy's search plus the
padded table, timed separately on the same structure, and its share is of the whole call, which
includes it. Both wall-clock and process CPU time are reported (CPU time is the steadier measure on
a shared machine; on CUDA only the wall-clock time means anything).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def supercell(n_atoms: int):
    """The cubic fcc Cu supercell (4 atoms per cube) with the number of atoms nearest ``n_atoms``."""
    from ase.build import bulk

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=0)
    return atoms


def measure(args) -> dict:
    """One size, in this process. Returns the row of the table."""
    import torch

    from sake_md.batch import atoms_to_batch
    from sake_md.model import ModelConfig, SAKEPotential, count_parameters
    from sake_md.neighbours import batch_table

    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        from sake_md.allocator import keep_freed_memory

        keep_freed_memory()  # what SAKECalculator does for a sparse model
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atoms = supercell(args.single)
    config = ModelConfig(variant=args.variant, hidden=args.hidden, heads=args.heads, layers=args.layers,
                         cutoff=args.cutoff)
    torch.manual_seed(0)
    potential = SAKEPotential([29], config).to(device=device, dtype=dtype).eval()
    for p in potential.parameters():
        p.requires_grad_(False)
    batch = atoms_to_batch([atoms], potential, dtype, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def neighbour_list():
        table = batch_table(batch.positions, batch.mask, args.cutoff, batch.cell, batch.pbc)
        sync()
        return table

    def call():
        out = potential.predict(batch.species, batch.positions, batch.mask, cell=batch.cell, pbc=batch.pbc,
                                stress=True)
        sync()
        return out

    def timed(fn):
        """Median wall-clock and process CPU seconds (on a shared machine the CPU time is the steadier)."""
        wall, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return float(np.median(wall)), float(np.median(cpu))

    table = neighbour_list()
    out = call()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    (t_call, cpu_call), (t_list, _) = timed(call), timed(neighbour_list)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    pairs = int(table.valid.sum())
    row = {"atoms": len(atoms), "pairs_per_atom": pairs / len(atoms), "slots_per_atom": table.valid.shape[-1],
           "ms_per_call": 1e3 * t_call, "us_per_atom": 1e6 * t_call / len(atoms), "cpu_ms_per_call": 1e3 * cpu_call,
           "neighbour_list_ms": 1e3 * t_list, "neighbour_list_share": t_list / t_call,
           "peak_memory_MB": peak_mb, "baseline_MB": baseline_mb if device.type == "cpu" else 0.0,
           "parameters": count_parameters(potential), "energy_eV": float(out["energy"][0]),
           "max_stress_eV_A3": float(out["stress"].abs().max())}
    if args.mace_model:
        row.update(mace_row(args, atoms))
    return row


def mace_row(args, atoms) -> dict:
    """MACE's ASE calculator on the same structure (needs mace-torch importable in this environment)."""
    try:
        from mace.calculators import MACECalculator
    except ImportError as e:
        return {"mace": f"not available ({e})"}
    calc = MACECalculator(model_paths=args.mace_model, device=args.device, default_dtype=args.dtype)
    a = atoms.copy()
    a.calc = calc

    def call():
        a.positions[0, 0] += 1e-6  # a new geometry: the calculator recomputes
        a.get_potential_energy(), a.get_forces(), a.get_stress()

    call()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"mace_ms_per_call": 1e3 * float(np.median(times))}


def run_size(args, n: int) -> dict:
    """Measure one size in a fresh process (its own peak memory); a size that fails is reported, not fatal."""
    cmd = [sys.executable, __file__, "--single", str(n)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("single", "sizes", "json", "default_allocator") and v is not None]
    cmd += ["--default-allocator"] if args.default_allocator else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"atoms": n, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def growth_exponent(rows: list[dict], key: str = "ms_per_call") -> tuple[float, int] | None:
    """Slope of log(time) against log(N) (1 = linear) over the sizes from 500 atoms on (all sizes when
    fewer than two are that large), and the smallest size used."""
    ok = [r for r in rows if key in r and r["atoms"] >= 500]
    if len(ok) < 2:
        ok = [r for r in rows if key in r]
    if len(ok) < 2:
        return None
    slope = np.polyfit(np.log([r["atoms"] for r in ok]), np.log([r[key] for r in ok]), 1)[0]
    return float(slope), min(r["atoms"] for r in ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="108,256,500,1372,2916,5324,10976", help="Numbers of atoms (nearest cube).")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--variant", default="sake")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mace-model", help="A MACE model file: time MACECalculator on the same structures.")
    ap.add_argument("--json", help="Write the rows to this file.")
    ap.add_argument("--default-allocator", action="store_true",
                    help="Leave glibc's allocator as it is (sake_md.allocator: super-linear time at large N).")
    ap.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single is not None:
        print(json.dumps(measure(args)))
        return
    print(f"sparse SAKE ({args.variant}, H={args.hidden}, K={args.heads}, {args.layers} layers), r_c = "
          f"{args.cutoff} Å, {args.dtype}, {args.device}, {args.threads} threads; energy + forces + stress")
    print(f"{'atoms':>6s} {'pairs/atom':>10s} {'ms/call':>10s} {'µs/atom':>8s} {'CPU ms':>10s} {'nlist ms':>9s} "
          f"{'nlist %':>8s} "
          f"{'peak MB':>9s} {'(baseline)':>10s}" + ("  MACE ms/call" if args.mace_model else ""))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        row = run_size(args, n)
        rows.append(row)
        if "error" in row:
            print(f"{row['atoms']:6d}  failed: {row['error']}", flush=True)
            continue
        mace = f"  {row['mace_ms_per_call']:12.1f}" if "mace_ms_per_call" in row else (
            f"  {row['mace']}" if "mace" in row else "")
        print(f"{row['atoms']:6d} {row['pairs_per_atom']:10.1f} {row['ms_per_call']:10.1f} {row['us_per_atom']:8.1f} "
              f"{row['cpu_ms_per_call']:10.1f} {row['neighbour_list_ms']:9.2f} "
              f"{100 * row['neighbour_list_share']:7.2f}% "
              f"{row['peak_memory_MB']:9.0f} {row['baseline_MB']:10.0f}{mace}", flush=True)
    fits = {key: growth_exponent(rows, key) for key in ("ms_per_call", "cpu_ms_per_call")}
    for key, label in (("ms_per_call", "wall-clock time"), ("cpu_ms_per_call", "process CPU time")):
        if fits[key] is not None:
            print(f"{label} ∝ N^{fits[key][0]:.2f} (log-log fit from {fits[key][1]} atoms on; 1 is linear)")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "exponents": {
            k: None if f is None else f[0] for k, f in fits.items()}}, indent=2))


if __name__ == "__main__":
    main()
