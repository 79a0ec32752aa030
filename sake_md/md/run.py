"""``sake-md run``: molecular dynamics of one structure with ASE's integrators and a SAKE calculator.

Every frame is flushed to the trajectory and the log as it is written, so a run stopped by Ctrl-C, SIGTERM or a collapse
leaves readable files. Exit statuses (``RunSummary.exit_status``): 0 finished, 3 collapsed (a bond deviated > 0.5 Å from
its reference), 4 stopped because a committee's largest per-atom force deviation passed ``max_force_std``, 128 + signal
when interrupted (130 for Ctrl-C, 143 for SIGTERM). Units: ASE's; fs and K only in the settings' names.
"""

import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from ..errors import InputError
from ..shipped import potential_for
from ..structures import load_structure
from .bonds import BondCriterion, BrokenBond

__all__ = ["EXIT_OK", "EXIT_COLLAPSED", "EXIT_UNCERTAIN", "ENSEMBLES", "MDSettings", "RunSummary", "thermalize",
           "initial_velocities", "make_dynamics", "FrameWriter", "EnergyLog", "energy_drift", "run_md",
           "run_from_files"]

EXIT_OK, EXIT_COLLAPSED, EXIT_UNCERTAIN = 0, 3, 4
ENSEMBLES = ("nve", "langevin", "nose-hoover", "bussi")


@dataclass
class MDSettings:
    """What to integrate and how. Thermostat times are in fs, friction in 1/fs, at this edge only."""

    ensemble: str = "langevin"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 1000
    interval: int = 10
    seed: int = 0
    friction_per_fs: float = 0.01
    tdamp_fs: float = 50.0
    max_force_std: float | None = None  # eV/Å: stop when a committee's max per-atom force std passes it
    warn_force_std: float | None = None  # eV/Å: warn once when it passes this

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"unknown ensemble {self.ensemble!r}; known: {', '.join(ENSEMBLES)}")
        if self.timestep_fs <= 0 or self.steps < 0 or self.interval < 1 or self.temperature_K < 0:
            raise InputError("timestep must be > 0 fs, steps ≥ 0, interval ≥ 1 and temperature ≥ 0 K")
        if any(x is not None and not x > 0 for x in (self.max_force_std, self.warn_force_std)):
            raise InputError("force deviation thresholds must be > 0 eV/Å")


@dataclass
class RunSummary:
    """What happened. Times in ps; drift in meV/atom/ps (NVE only); ``collapse`` names the broken bond."""

    steps: int
    time_ps: float
    wall_s: float
    atoms: int
    ensemble: str
    collapse: BrokenBond | None = None
    collapse_step: int | None = None
    last_good_frame_step: int | None = None
    interrupted_by: str | None = None
    drift_meV_per_atom_ps: float | None = None
    fluctuation_ratio: float | None = None
    frames_written: int = 0
    energies: list = field(default_factory=list, repr=False)
    force_std_max: float | None = None  # eV/Å, the largest committee deviation of the run (committees only)
    force_std_max_step: int | None = None
    force_std_warn_step: int | None = None
    uncertain_step: int | None = None  # where the deviation passed max_force_std and the run stopped
    bonds_checked: bool = True  # False for periodic structures: the bond criterion is for molecules

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def stable(self) -> bool:
        return self.collapse is None

    @property
    def exit_status(self) -> int:
        if self.interrupted_by is not None:
            return 128 + getattr(signal, self.interrupted_by, signal.SIGINT).value
        if not self.stable:
            return EXIT_COLLAPSED
        return EXIT_OK if self.uncertain_step is None else EXIT_UNCERTAIN

    def lines(self, dt_fs: float) -> list[str]:
        out = [f"simulated {self.time_ps:.4f} ps ({self.steps} steps of {dt_fs:g} fs, {self.ensemble}, "
               f"{self.atoms} atoms) in {self.wall_s:.1f} s: {self.steps_per_s:.1f} steps/s"]
        if self.drift_meV_per_atom_ps is not None:
            out.append(f"energy drift {self.drift_meV_per_atom_ps:.3g} meV/atom/ps (linear fit of the total "
                       f"energy); std(E_tot)/std(E_kin) = {self.fluctuation_ratio:.3g}")
        if self.interrupted_by is not None:
            out.append(f"interrupted by {self.interrupted_by} after {self.steps} steps; the trajectory and log "
                       f"hold {self.frames_written} frames")
        if self.collapse is not None:
            out.append(f"COLLAPSED at step {self.collapse_step} ({self.collapse_step * dt_fs / 1000:.4f} ps): "
                       f"{self.collapse}; the trajectory keeps the frames up to step {self.last_good_frame_step}")
        elif self.interrupted_by is None:
            out.append("stable: no bond deviated more than 0.5 Å from its reference" if self.bonds_checked else
                       "periodic structure: bonds were not checked (the collapse criterion is for molecules)")
        if self.force_std_max is not None:
            out.append(f"committee: largest per-atom force deviation {self.force_std_max:.4g} eV/Å at step "
                       f"{self.force_std_max_step}")
        if self.uncertain_step is not None:
            out.append(f"STOPPED at step {self.uncertain_step} ({self.uncertain_step * dt_fs / 1000:.4f} ps): the "
                       f"committee's force deviation passed --max-force-std; the trajectory ends with that frame")
        return out


# --- inputs ------------------------------------------------------------------------------------------
def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator):
    """Maxwell–Boltzmann momenta at ``temperature_K`` (ASE ≥ 3.29 renamed the function)."""
    import ase.md.velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def initial_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator):
    """Maxwell–Boltzmann momenta at ``temperature_K``, without centre-of-mass motion or (molecules) rotation."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    thermalize(atoms, temperature_K, rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def make_dynamics(atoms: Atoms, s: MDSettings, rng: np.random.Generator):
    """ASE's integrator for ``s.ensemble``."""
    from ase.md.bussi import Bussi
    from ase.md.langevin import Langevin
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.verlet import VelocityVerlet

    dt = s.timestep_fs * units.fs
    if s.ensemble == "nve":
        return VelocityVerlet(atoms, dt)
    if s.ensemble == "langevin":
        return Langevin(atoms, dt, temperature_K=s.temperature_K, friction=s.friction_per_fs / units.fs, fixcm=False,
                        rng=rng)
    if s.ensemble == "nose-hoover":
        return NoseHooverChainNVT(atoms, dt, temperature_K=s.temperature_K, tdamp=s.tdamp_fs * units.fs)
    return Bussi(atoms, dt, temperature_K=s.temperature_K, taut=s.tdamp_fs * units.fs, rng=rng)


# --- outputs -----------------------------------------------------------------------------------------
class FrameWriter:
    """Frames to extxyz (``.xyz``/``.extxyz``) or an ASE trajectory (``.traj``), flushed frame by frame."""

    def __init__(self, path):
        self.path, self.count = Path(path), 0
        if self.path.suffix == ".traj":
            from ase.io.trajectory import Trajectory

            self._traj, self._file = Trajectory(str(self.path), "w"), None
        elif self.path.suffix in (".xyz", ".extxyz"):
            self._traj, self._file = None, open(self.path, "w")
        else:
            raise InputError(f"trajectory {self.path}: use a .extxyz, .xyz or .traj suffix")

    def write(self, atoms: Atoms):
        if self._traj is not None:
            self._traj.write(atoms)
        else:
            import ase.io

            ase.io.write(self._file, atoms, format="extxyz")
            self._file.flush()
        self.count += 1

    def close(self):
        (self._traj or self._file).close()


class EnergyLog:
    """A whitespace-separated table, one line per frame, flushed per line; for a committee, a last column
    with its largest per-atom force deviation.

    Not ``ase.md.MDLogger``: that one is attached to the integrator on its own interval and has no step
    column, no extra columns and 4 decimals (0.1 meV) for up to 100 atoms; this log is written with each
    trajectory frame (the committee's stop frame included), so log lines and frames match one to one.
    """

    HEADER = "# step time[ps] Etot[eV] Epot[eV] Ekin[eV] T[K]"

    def __init__(self, path, committee: bool = False):
        self._file = open(path, "w")
        self._file.write(self.HEADER + (" maxFstd[eV/Å]\n" if committee else "\n"))
        self._file.flush()

    def write(self, step: int, time_ps: float, epot: float, ekin: float, temperature: float,
              force_std: float | None = None):
        extra = "" if force_std is None else f" {force_std:.6f}"
        self._file.write(f"{step} {time_ps:.5f} {epot + ekin:.6f} {epot:.6f} {ekin:.6f} {temperature:.2f}{extra}\n")
        self._file.flush()

    def close(self):
        self._file.close()


def energy_drift(times_ps: np.ndarray, total: np.ndarray, n_atoms: int) -> float:
    """Slope of a linear fit of the total energy (eV) against time (ps), in meV/atom/ps."""
    if len(times_ps) < 3:
        return float("nan")
    return float(np.polyfit(times_ps, total, 1)[0] * 1000.0 / n_atoms)


# --- the run -----------------------------------------------------------------------------------------
class _Stop(Exception):
    """Ends ``dyn.run`` early: a collapse, a committee's stop or a signal; ``fields`` are the ``RunSummary``
    fields that say which (``collapse``/``collapse_step``, ``uncertain_step`` or ``interrupted_by``)."""

    def __init__(self, **fields):
        self.fields = fields


@contextmanager
def _catch_signals(recorder: "_Recorder"):
    """On SIGINT or SIGTERM, ask the recorder to stop at the next step boundary (so no frame is cut in
    half); a second signal stops at once (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if recorder.stop_requested:
            raise _Stop(interrupted_by=name)
        recorder.stop_requested = name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_md(atoms: Atoms, calculator, settings: MDSettings, traj=None, log=None,
           criterion: BondCriterion | None = None, progress: bool = True, initialise_velocities: bool = True
           ) -> RunSummary:
    """Integrate ``atoms`` with ``calculator``; check the bonds every step, write a frame every ``interval``.
    ``criterion`` defaults to the bonds of the first frame with their lengths there as references. With a
    ``CommitteeCalculator``, its largest per-atom force deviation is logged and checked against
    ``settings.max_force_std`` and ``settings.warn_force_std``."""
    s = settings
    rng = np.random.default_rng(s.seed)
    atoms.calc = calculator
    atoms.get_forces()  # refuses unknown elements and bad structures before anything is written
    committee = "forces_std_max" in calculator.results
    if not committee and (s.max_force_std or s.warn_force_std):
        raise InputError("force deviation thresholds need a committee: give several potentials")
    if initialise_velocities:
        initial_velocities(atoms, s.temperature_K, rng)
    periodic = bool(atoms.pbc.any())
    criterion = criterion or (None if periodic else BondCriterion.from_atoms(atoms))
    dyn = make_dynamics(atoms, s, rng)
    record = _Recorder(atoms, dyn, s, criterion, traj, log, progress, committee)
    dyn.attach(record, interval=1)
    start, ended = time.perf_counter(), {}
    try:
        with _catch_signals(record):
            dyn.run(s.steps)
    except _Stop as stop:
        ended = stop.fields
    except KeyboardInterrupt:
        ended = {"interrupted_by": "SIGINT"}
    finally:
        wall_s = time.perf_counter() - start
        record.close()
    summary = RunSummary(record.last_step, record.last_step * s.timestep_fs / 1000.0, wall_s, len(atoms), s.ensemble,
                         last_good_frame_step=record.last_frame_step, energies=record.totals,
                         frames_written=record.frames,
                         bonds_checked=criterion is not None, **ended)
    if committee:
        summary.force_std_max, summary.force_std_max_step = record.deviation_max, record.deviation_max_step
        summary.force_std_warn_step = record.warned_step
    if s.ensemble == "nve" and record.times:
        summary.drift_meV_per_atom_ps = energy_drift(np.array(record.times), np.array(record.totals), len(atoms))
        summary.fluctuation_ratio = float(np.std(record.totals) / max(np.std(record.kinetic), 1e-300))
    return summary


class _Recorder:
    """The per-step observer: bond check, energies for the drift fit, committee deviation, frames, log
    and progress bar."""

    def __init__(self, atoms, dyn, s: MDSettings, criterion, traj, log, progress, committee=False):
        from tqdm.auto import tqdm

        self.atoms, self.dyn, self.s, self.criterion = atoms, dyn, s, criterion
        self.writer, self.logger = FrameWriter(traj) if traj else None, EnergyLog(log, committee) if log else None
        self.bar = tqdm(total=s.steps, unit="step", disable=not progress, dynamic_ncols=True)
        self.times, self.totals, self.kinetic = [], [], []
        self.last_step, self.last_frame_step, self.frames = 0, None, 0
        self.stop_requested: str | None = None
        self.committee, self.deviation = committee, None
        self.deviation_max, self.deviation_max_step, self.warned_step = -1.0, None, None

    def __call__(self):
        if self.stop_requested:
            raise _Stop(interrupted_by=self.stop_requested)
        step = self.dyn.nsteps
        broken = None if self.criterion is None else self.criterion.first_broken(self.atoms.positions)
        if broken is not None:
            raise _Stop(collapse=broken, collapse_step=step)
        epot, ekin = self.atoms.get_potential_energy(), self.atoms.get_kinetic_energy()
        t_ps = step * self.s.timestep_fs / 1000.0
        self.times.append(t_ps)
        self.totals.append(epot + ekin)
        self.kinetic.append(ekin)
        self.last_step = step
        stop = self.committee and self._check_deviation(step)
        if step % self.s.interval == 0 or stop:
            self._frame(step, t_ps, epot, ekin)
        if stop:
            raise _Stop(uncertain_step=step)
        if step > 0:
            self.bar.update(1)

    def _check_deviation(self, step: int) -> bool:
        """Track the committee's largest per-atom force deviation; warn once; True: stop here."""
        self.deviation = float(self.atoms.calc.results["forces_std_max"])
        if self.deviation > self.deviation_max:
            self.deviation_max, self.deviation_max_step = self.deviation, step
        warn = self.s.warn_force_std
        if warn is not None and self.warned_step is None and self.deviation > warn:
            self.warned_step = step
            self.bar.write(f"warning: at step {step} the committee's force deviation {self.deviation:.4g} eV/Å "
                           f"passed {warn:g} eV/Å", file=sys.stderr)
        return self.s.max_force_std is not None and self.deviation > self.s.max_force_std

    def _frame(self, step, t_ps, epot, ekin):
        temperature = self.atoms.get_temperature()
        if self.writer:
            self.writer.write(self.atoms)
        if self.logger:
            self.logger.write(step, t_ps, epot, ekin, temperature, self.deviation)
        self.last_frame_step = step
        self.frames += 1
        extra = {} if self.deviation is None else {"maxFstd": f"{self.deviation:.3f}eV/Å"}
        self.bar.set_postfix(T=f"{temperature:.0f}K", Etot=f"{epot + ekin:.4f}eV", **extra, refresh=False)

    def close(self):
        self.bar.close()
        for f in (self.writer, self.logger):
            if f:
                f.close()


def run_from_files(potential=None, structure: str | None = None, reference=None,
                   settings: MDSettings | None = None, traj=None, log=None, device="cpu", dtype=None,
                   progress: bool = True, compile="auto") -> RunSummary:
    """What ``sake-md run`` does: resolve the structure (default: ethanol) and the potential (default: the shipped one
    trained on the structure's composition, else the default shipped one; several: a committee), optionally
    reference bond lengths from a dataset, then ``run_md``. ``compile``: True, False or "auto"
    (``sake_md.compile.make_predictor``, for the run's steps); a committee runs eagerly."""
    from ..calculator import SAKECalculator
    from ..committee import CommitteeCalculator
    from .reference import read_reference

    settings = settings or MDSettings()
    atoms = load_structure(structure)
    potentials = list(potential) if isinstance(potential, (list, tuple)) else [potential] if potential else []
    models = potentials or [potential_for(atoms)]
    calc = (CommitteeCalculator(models, device=device, dtype=dtype) if len(models) > 1 else
            SAKECalculator(models[0], device=device, dtype=dtype, compile=compile, expected_calls=settings.steps + 1))
    criterion = None
    if reference is not None:
        ref = read_reference(reference)
        ref.check_same_molecule(atoms.numbers)
        criterion = BondCriterion.from_atoms(atoms, ref.positions)
    return run_md(atoms, calc, settings, traj, log, criterion, progress)
