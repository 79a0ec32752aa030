"""Steps per second of SAKE MD, side by side in one run: ASE (what ``sake-md run`` does), OpenMM with the SAKE
force (``sake_md.engines.openmm``: openmm-torch's TorchForce where it works here, and always the PythonForce
running the same TorchScript module), and OpenMM with openmm-ml's generic ASE wrapper (``MLPotential("ase")``,
a PythonForce calling ``SAKECalculator``); ethanol in vacuum and ethanol in a 2 nm TIP3P box (ML/MM,
mechanical embedding, PME), with the MM-only box for scale.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_openmm.py [--steps 300] [--rounds 2] [--dtype float32]
                                                                    [--checkpoint CKPT] [--platform CPU]

Langevin, 0.5 fs, 300 K, one thread (torch and OpenMM's CPU platform). Each engine runs ``--steps`` after a
warm-up of 20 steps, in ``--rounds`` interleaved rounds; the best round is reported, as wall-clock steps/s and
as steps per CPU-second of this process (less sensitive to other jobs on the core). The SAKE force rows say
their kind: TorchForce (openmm-torch, no Python per step; only where ``torch_force_unavailable()`` finds none)
and PythonForce (the fallback).
"""

import argparse
import datetime
import platform
import time
import warnings
from pathlib import Path

import ase.build
import numpy as np
import torch

from sake_md import SAKECalculator
from sake_md.md.run import MDSettings, initial_velocities, make_dynamics
from sake_md.shipped import shipped_potential

ROOT = Path(__file__).resolve().parents[1]
ETHANOL_FF = ROOT / "tests" / "data" / "ethanol_ff.xml"
NAMES = ["C1", "C2", "O", "HO", "H21", "H22", "H11", "H12", "H13"]


def ase_engine(checkpoint, dtype):
    """``sake-md run`` without files: ASE Langevin, eager SAKECalculator (what "auto" picks for short runs)."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.calc = SAKECalculator(checkpoint, dtype=dtype, compile=False)
    rng = np.random.default_rng(0)
    initial_velocities(atoms, 300.0, rng)
    dyn = make_dynamics(atoms, MDSettings(), rng)
    return dyn.run


def openmm_engine(system, positions_nm, box=None, platform_name="CPU"):
    import openmm

    integrator = openmm.LangevinMiddleIntegrator(300.0, 10.0, 0.0005)
    integrator.setRandomNumberSeed(1)
    properties = {"Threads": "1"} if platform_name == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name), properties)
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions_nm)
    context.setVelocitiesToTemperature(300.0, 1)

    def run(steps, context=context):  # the Context must live as long as its integrator is stepped
        integrator.step(steps)

    return run


def vacuum_systems(checkpoint, dtype, kinds):
    """Positions (nm), {force kind: System with the SAKE force}, the System with openmm-ml's ASE wrapper."""
    from openmmml import MLPotential

    from sake_md.engines.openmm import openmm_topology

    atoms = ase.build.molecule("CH3CH2OH")
    topology = openmm_topology(atoms)
    sake = {kind: MLPotential("sake", model=checkpoint).createSystem(topology, dtype=dtype, force=kind)
            for kind in kinds}
    generic = MLPotential("ase").createSystem(topology, calculator=SAKECalculator(checkpoint, dtype=dtype))
    return atoms.positions / 10, sake, generic


def box_systems(checkpoint, dtype, kinds):
    """Ethanol in 2 nm of TIP3P: MM only, ML/MM with the SAKE force, ML/MM with openmm-ml's ASE wrapper."""
    import openmm
    from openmm import app, unit
    from openmmml import MLPotential

    from sake_md.engines.openmm import openmm_topology

    atoms = ase.build.molecule("CH3CH2OH")
    forcefield = app.ForceField(str(ETHANOL_FF), "tip3p.xml")
    modeller = app.Modeller(openmm_topology(atoms, residue="ETH", names=NAMES), atoms.positions / 10 + 1.0)
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(2.0, 2.0, 2.0) * unit.nanometer)
    mm = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer,
                                 constraints=app.HBonds)
    ml = list(range(len(atoms)))
    sake = {kind: MLPotential("sake", model=checkpoint).createMixedSystem(modeller.topology, mm, ml, cutoff=1.0,
                                                                         dtype=dtype, force=kind)
            for kind in kinds}
    # the generic wrapper hands ASE a periodic Atoms object: SAKE needs its sparse mode (10 Å, the same numbers)
    generic = MLPotential("ase").createMixedSystem(modeller.topology, mm, ml, mlLongRange=False,
                                                   calculator=SAKECalculator(checkpoint, dtype=dtype, cutoff=10.0))
    waters = sum(1 for r in modeller.topology.residues() if r.name == "HOH")
    return modeller.positions, mm, sake, generic, waters


def measure(engines: dict, steps: int, rounds: int) -> dict:
    """{name: (best wall steps/s, best CPU steps/s)} over interleaved rounds."""
    best = {name: (0.0, 0.0) for name in engines}
    for run in engines.values():
        run(20)
    for _ in range(rounds):
        for name, run in engines.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(steps)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (max(best[name][0], steps / wall), max(best[name][1], steps / cpu))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--checkpoint", default=None, help="[default: the shipped potential]")
    parser.add_argument("--platform", default="CPU")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = str(args.checkpoint or shipped_potential())
    from sake_md.engines.openmm import torch_force_unavailable

    reason = torch_force_unavailable()
    kinds = ["python"] if reason else ["torch", "python"]
    names = {"torch": "OpenMM, SAKE TorchForce", "python": "OpenMM, SAKE PythonForce"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x, sake, generic = vacuum_systems(checkpoint, args.dtype, kinds)
        box_x, mm, box_sake, box_generic, waters = box_systems(checkpoint, args.dtype, kinds)
    vacuum = measure({"ASE (sake-md run)": ase_engine(checkpoint, args.dtype),
                      **{names[k]: openmm_engine(sake[k], x, platform_name=args.platform) for k in kinds},
                      "OpenMM, openmm-ml ASE wrapper": openmm_engine(generic, x, platform_name=args.platform)},
                     args.steps, args.rounds)
    box = measure({"OpenMM, MM only (no ML)": openmm_engine(mm, box_x, platform_name=args.platform),
                   **{names[k]: openmm_engine(box_sake[k], box_x, platform_name=args.platform) for k in kinds},
                   "OpenMM, openmm-ml ASE wrapper": openmm_engine(box_generic, box_x, platform_name=args.platform)},
                  args.steps, args.rounds)
    import openmm

    versions = f"openmm {openmm.__version__}"
    if not reason:
        from importlib.metadata import version

        versions += f", openmmtorch {version('openmmtorch')}"
    print(f"# bench_openmm.py, {datetime.date.today()}, {platform.node()}, torch {torch.__version__}, "
          f"{args.dtype}, {Path(checkpoint).name}, Langevin 0.5 fs, 1 thread, {args.platform} platform, "
          f"{args.steps} steps x best of {args.rounds} rounds, {versions}")
    print("# SAKE force kinds: " + ("TorchForce and PythonForce" if not reason else f"PythonForce only ({reason})"))
    print(f"{'system':<28} {'engine':<32} {'steps/s (wall)':>15} {'steps/CPU-s':>12}")
    for label, table in (("ethanol, vacuum (9 atoms)", vacuum),
                         (f"ethanol + {waters} TIP3P", box)):
        for name, (wall, cpu) in table.items():
            print(f"{label:<28} {name:<32} {wall:>15.1f} {cpu:>12.1f}")
    for kind in kinds:
        ratio = vacuum[names[kind]][1] / box[names[kind]][1]
        print(f"# ML/MM box cost / vacuum ML cost ({names[kind][8:]}, CPU time per step): {ratio:.2f}x")
        ratio = vacuum[names[kind]][1] / vacuum["ASE (sake-md run)"][1]
        print(f"# {names[kind]} / ASE in vacuum (steps per CPU-second): {ratio:.2f}x")
    if "torch" in kinds:
        for label, table in (("vacuum", vacuum), ("ML/MM box", box)):
            ratio = table[names["torch"]][1] / table[names["python"]][1]
            print(f"# TorchForce / PythonForce, {label} (steps per CPU-second): {ratio:.2f}x")


if __name__ == "__main__":
    main()
