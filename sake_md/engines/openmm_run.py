"""``sake-md openmm``: ``sake-md run``'s molecular dynamics, integrated by OpenMM.

Same defaults (``sake_md.md.run.MDSettings``: the shipped potential, ethanol, Langevin at 300 K, 0.5 fs,
1,000 steps, a frame every 10 steps, seed 0), the same Maxwell–Boltzmann start for a seed, the same
trajectory (extxyz or ASE .traj, which ASE and MDTraj read) and energy log, the same summary and exit
statuses. Comparing engines is one word: ``sake-md run`` ↔ ``sake-md openmm``.

Differences, on purpose: OpenMM integrates ``interval`` steps without Python in between (with
openmm-torch; see ``sake_md.engines.openmm``), so the bonds are checked at every frame rather than every
step; ``langevin`` is OpenMM's ``LangevinMiddleIntegrator`` (ASE's is BAOAB-like, too), ``nose-hoover``
its ``NoseHooverIntegrator`` (one chain of 3), ``nve`` its ``VerletIntegrator``; ``bussi`` has no
OpenMM integrator and is refused. Units: ASE's in files and logs (eV, Å); OpenMM's inside.
"""

import time
from pathlib import Path

import numpy as np
from ase import units

from ..errors import InputError
from ..md.bonds import BondCriterion
from ..md.run import EnergyLog, FrameWriter, MDSettings, RunSummary, energy_drift, initial_velocities
from ..shipped import potential_for
from ..structures import load_structure

__all__ = ["run_openmm", "make_integrator", "PLATFORMS"]

PLATFORMS = ("CPU", "Reference", "CUDA", "OpenCL")
KJ_PER_MOL = units.kJ / units.mol  # eV


def make_integrator(s: MDSettings):
    """OpenMM's integrator for ``s.ensemble`` (times in ps, friction in 1/ps)."""
    import openmm

    dt = s.timestep_fs / 1000.0
    if s.ensemble == "nve":
        return openmm.VerletIntegrator(dt)
    if s.ensemble == "langevin":
        return openmm.LangevinMiddleIntegrator(s.temperature_K, s.friction_per_fs * 1000.0, dt)
    if s.ensemble == "nose-hoover":
        return openmm.NoseHooverIntegrator(s.temperature_K, 1000.0 / s.tdamp_fs, dt)
    raise InputError(f"ensemble {s.ensemble!r} has no OpenMM integrator here; use nve, langevin or nose-hoover "
                     "(or sake-md run for ASE's Bussi thermostat)")


def run_openmm(potential=None, structure: str | None = None, settings: MDSettings | None = None, traj=None,
               log=None, dtype=None, device: str = "cpu", platform: str = "CPU", force: str = "auto",
               cutoff: float | None = None, progress: bool = True, threads: int = 1) -> RunSummary:
    """Integrate ``structure`` (default ethanol) with OpenMM and ``potential`` (default: as ``sake-md run``'s).

    ``cutoff`` in Å (the project's CLI unit) puts a dense model in sparse mode; ``force``: see
    ``sake_md.engines.openmm.sake_force``; ``platform``: an OpenMM platform name.
    """
    import openmm
    from openmmml import MLPotential

    from .openmm import openmm_topology

    s = settings or MDSettings()
    if s.max_force_std or s.warn_force_std:
        raise InputError("committee force thresholds are for sake-md run (committees run in ASE)")
    atoms = load_structure(structure)
    integrator = make_integrator(s)  # refuses bussi before anything is built
    topology = openmm_topology(atoms)
    writer = trajectory_writer(traj, topology, s) if traj else None  # refuses an unknown suffix
    system = MLPotential("sake", model=potential or potential_for(atoms)).createSystem(
        topology, dtype=dtype, device=device, force=force,
        cutoff=None if cutoff is None else cutoff / 10.0)  # Å -> nm
    if hasattr(integrator, "setRandomNumberSeed"):
        integrator.setRandomNumberSeed(s.seed + 1)  # reproducible per seed; 0 would ask OpenMM for a random one
    properties = {"Threads": str(threads)} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    context.setPositions(atoms.positions / 10.0)
    if atoms.pbc.any():
        context.setPeriodicBoxVectors(*[openmm.Vec3(*v) / 10.0 for v in atoms.cell.array])
    initial_velocities(atoms, s.temperature_K, np.random.default_rng(s.seed))  # as sake-md run, per seed
    context.setVelocities(atoms.get_velocities() * units.fs * 100.0)  # Å/(ASE time) -> nm/ps
    return _integrate(context, integrator, atoms, s, writer, log, progress)


class DCDWriter:
    """Frames to a DCD file (OpenMM's ``DCDFile``, in Å) beside a PDB of the first frame with the topology,
    so that MDTraj and VMD read them: ``mdtraj.load("md.dcd", top="md.pdb")``."""

    def __init__(self, path, topology, s: MDSettings):
        from openmm import app

        self.path, self.topology, self.count = Path(path), topology, 0
        self._file = open(self.path, "wb")
        self._dcd = app.DCDFile(self._file, topology, s.timestep_fs / 1000.0, 0, s.interval)

    def write(self, atoms):
        from openmm import app, unit

        positions = atoms.positions * unit.angstrom
        box = atoms.cell.array * unit.angstrom if atoms.pbc.any() else None
        if self.count == 0:
            with open(self.path.with_suffix(".pdb"), "w") as pdb:
                app.PDBFile.writeFile(self.topology, positions, pdb)
        self._dcd.writeModel(positions, periodicBoxVectors=box)
        self._file.flush()
        self.count += 1

    def close(self):
        self._file.close()


def trajectory_writer(path, topology, s: MDSettings):
    """``sake-md run``'s writer (extxyz, xyz, ASE .traj) or, for ``.dcd``, a DCD with a PDB topology."""
    return DCDWriter(path, topology, s) if Path(path).suffix == ".dcd" else FrameWriter(path)


def _integrate(context, integrator, atoms, s: MDSettings, writer, log, progress) -> RunSummary:
    """Run ``s.steps`` in chunks of ``s.interval``; write, log and check the bonds at each frame."""
    from tqdm.auto import tqdm

    periodic = bool(atoms.pbc.any())
    criterion = None if periodic else BondCriterion.from_atoms(atoms)
    logger = EnergyLog(log) if log else None
    summary = RunSummary(0, 0.0, 0.0, len(atoms), s.ensemble, bonds_checked=criterion is not None)
    bar = tqdm(total=s.steps, unit="step", disable=not progress, dynamic_ncols=True)
    times, totals, kinetic, step = [], [], [], 0
    start = time.perf_counter()
    try:
        while True:
            epot, ekin = _frame(context, atoms)
            broken = None if criterion is None else criterion.first_broken(atoms.positions)
            if broken is not None:
                summary.collapse, summary.collapse_step = broken, step
                break
            t_ps = step * s.timestep_fs / 1000.0
            times.append(t_ps)
            totals.append(epot + ekin)
            kinetic.append(ekin)
            temperature = 2.0 * ekin / (3.0 * len(atoms) * units.kB)  # ASE's convention (3N degrees)
            if writer:
                writer.write(atoms)
            if logger:
                logger.write(step, t_ps, epot, ekin, temperature)
            summary.last_good_frame_step, summary.frames_written = step, summary.frames_written + 1
            bar.set_postfix(T=f"{temperature:.0f}K", Etot=f"{epot + ekin:.4f}eV", refresh=False)
            if step >= s.steps:
                break
            chunk = min(s.interval, s.steps - step)
            integrator.step(chunk)
            step += chunk
            bar.update(chunk)
    except KeyboardInterrupt:
        summary.interrupted_by = "SIGINT"
    finally:
        summary.wall_s = time.perf_counter() - start
        bar.close()
        for f in (writer, logger):
            if f:
                f.close()
    summary.steps, summary.time_ps, summary.energies = step, step * s.timestep_fs / 1000.0, totals
    if s.ensemble == "nve" and len(times) >= 3:
        summary.drift_meV_per_atom_ps = energy_drift(np.array(times), np.array(totals), len(atoms))
        summary.fluctuation_ratio = float(np.std(totals) / max(np.std(kinetic), 1e-300))  # over frames
    return summary


def _frame(context, atoms) -> tuple[float, float]:
    """Copy the state into ``atoms`` (positions, velocities, a single-point energy): E_pot, E_kin in eV."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from openmm import unit

    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True)
    atoms.positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    atoms.set_velocities(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
                         / (units.fs * 100.0))
    epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL
    ekin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    atoms.calc = SinglePointCalculator(atoms, energy=epot, free_energy=epot, forces=forces * KJ_PER_MOL / 10.0)
    return epot, ekin
