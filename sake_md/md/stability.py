"""The MD stability protocol of docs/stability.md (after Fu et al., "Forces are not Enough", 2023) on the
batched replica engine: all runs of one potential advance together, one model call per step.

Per run: a random start frame of the test (or reference) set, Maxwell–Boltzmann momenta, Nosé–Hoover
NVT; every ``frame_interval`` steps the bonds are checked (> 0.5 Å from the reference mean = collapse)
and, while intact, the frame's distances enter the run's h(r).
"""

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from ase import units

from ..errors import InputError
from ..model import SAKEPotential
from .bonds import BondCriterion
from .rdf import BINS, density, distance_counts, h_of_r, hr_error
from .reference import MoleculeFrames
from .replicas import NoseHooverChain, ReplicaState, SAKEForces, maxwell_boltzmann, simulate

__all__ = ["StabilityPreset", "PRESETS", "RunRecord", "StabilityResult", "protocol_setup", "run_stability",
           "force_errors"]


@dataclass(frozen=True)
class StabilityPreset:
    """Temperature (K), time step (fs), run length (ps), frame interval and thermostat time (steps),
    Nosé–Hoover chain length (1: the plain Nosé–Hoover thermostat of the protocol) and runs per model."""

    name: str
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    time_ps: float = 300.0
    frame_interval: int = 100
    tdamp_steps: int = 20
    chain: int = 1
    runs: int = 5

    def steps(self, time_ps: float | None = None) -> int:
        return int(round((time_ps or self.time_ps) * 1000.0 / self.timestep_fs))


PRESETS = {"mdsim-md17": StabilityPreset("mdsim-md17")}

@dataclass
class RunRecord:
    """One run: its start frame, stability time (ps), the collapse (None when it stayed intact), the
    number of intact frames and its h(r) error."""

    start_frame: int
    stability_ps: float
    collapse: str | None
    collapse_ps: float | None
    frames: int
    hr_error: float


@dataclass
class StabilityResult:
    """Per model: the runs, h(r) over all intact frames (500,), speed and settings."""

    model: str
    runs: list[RunRecord]
    hr: np.ndarray = field(repr=False)
    steps: int = 0
    wall_s: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    force_mae_meV_A: float | None = None
    force_rmse_meV_A: float | None = None

    @property
    def stability_mean_ps(self) -> float:
        return float(np.mean([r.stability_ps for r in self.runs]))

    @property
    def stability_std_ps(self) -> float:
        return float(np.std([r.stability_ps for r in self.runs]))

    @property
    def hr_error(self) -> float:
        """The mean over runs of each run's h(r) error (its intact frames against the reference)."""
        errors = [r.hr_error for r in self.runs if np.isfinite(r.hr_error)]
        return float(np.mean(errors)) if errors else float("nan")

    @property
    def steps_per_s(self) -> float:
        """Steps of the whole batch (all runs together) per second."""
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"model": self.model, "stability_ps_mean": self.stability_mean_ps,
                "stability_ps_std": self.stability_std_ps, "hr_error": self.hr_error,
                "force_mae_meV_A": self.force_mae_meV_A, "force_rmse_meV_A": self.force_rmse_meV_A,
                "steps": self.steps, "wall_s": self.wall_s, "steps_per_s": self.steps_per_s,
                "replica_steps_per_s": self.steps_per_s * len(self.runs), "device": self.device,
                "dtype": self.dtype, "runs": [asdict(r) for r in self.runs], "hr": self.hr.tolist()}


class _Monitor:
    """Observer of ``simulate``: bond check and h(r) counts per run, every frame."""

    def __init__(self, criteria: list[BondCriterion], progress_bar=None):
        self.criteria, self.bar = criteria, progress_bar
        runs = len(criteria)
        self.counts = np.zeros((runs, len(BINS) - 1))
        self.last_good, self.frames = [0] * runs, [0] * runs
        self.collapse: list[tuple[int, str] | None] = [None] * runs
        self.last_step = 0

    def __call__(self, step: int, state: ReplicaState) -> bool:
        positions = state.positions.detach().cpu().to(torch.float64).numpy()
        for b, criterion in enumerate(self.criteria):
            if self.collapse[b] is not None:
                continue
            n = len(criterion.numbers)
            broken = criterion.first_broken(positions[b, :n])
            if broken is None:
                self.last_good[b], self.frames[b] = step, self.frames[b] + 1
                self.counts[b] += distance_counts(positions[b:b + 1, :n])
            else:
                self.collapse[b] = (step, str(broken))
        if self.bar is not None:
            self.bar.update(step - self.last_step)
            temperature = state.temperature().mean().item()
            self.bar.set_postfix(T=f"{temperature:.0f}K", collapsed=sum(c is not None for c in self.collapse),
                                 refresh=False)
        self.last_step = step
        return all(c is not None for c in self.collapse)


def protocol_setup(potential: SAKEPotential, reference: MoleculeFrames, start: MoleculeFrames,
                   preset: StabilityPreset, runs: int, seed: int = 0, device="cpu", compile=False,
                   expected_calls: int | None = None):
    """The protocol's starting point: ``runs`` distinct start frames of ``start`` (drawn with ``seed``), their
    replica state with Maxwell–Boltzmann momenta, the force model (``compile`` as ``SAKEForces``), the
    Nosé–Hoover integrator and the bond criteria (reference lengths: the mean over ``reference``). Returns
    (frames, model, state, integrator, criteria)."""
    reference.check_same_molecule(start.numbers, f"start set {start.source}")
    if runs > len(start):
        raise InputError(f"{runs} runs need {runs} distinct start frames; {start.source} has {len(start)}")
    rng = np.random.default_rng(seed)
    frames = sorted(int(k) for k in rng.choice(len(start), runs, replace=False))
    atoms_list = [start.atoms(k) for k in frames]
    model = SAKEForces.for_atoms(potential, atoms_list, device, compile, expected_calls=expected_calls)
    state = ReplicaState.from_atoms(atoms_list, torch.float64, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    maxwell_boltzmann(state, preset.temperature_K, generator)
    dt = preset.timestep_fs * units.fs
    integrator = NoseHooverChain(dt, preset.temperature_K, preset.tdamp_steps * dt, preset.chain)
    criteria = [BondCriterion.from_atoms(a, reference.positions) for a in atoms_list]
    return frames, model, state, integrator, criteria


def run_stability(potential: SAKEPotential, reference: MoleculeFrames, start: MoleculeFrames,
                  preset: StabilityPreset, runs: int, time_ps: float | None = None, seed: int = 0,
                  device="cpu", name: str = "model", progress: bool = False, compile=False) -> StabilityResult:
    """Run the protocol for one potential: ``runs`` replicas from random frames of ``start``. ``compile`` (True,
    False, "auto") as ``SAKEForces``; "auto" weighs the run's steps."""
    steps = preset.steps(time_ps)
    frames, model, state, integrator, criteria = protocol_setup(potential, reference, start, preset, runs, seed,
                                                                device, compile, expected_calls=steps + 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, unit="step", desc=name, dynamic_ncols=True) if progress else None
    monitor = _Monitor(criteria, bar)
    t0 = time.perf_counter()
    done = simulate(state, integrator, model, steps, preset.frame_interval, monitor)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return _result(name, monitor, frames, reference, preset, done, wall, device, potential.dtype)


def _result(name, monitor: _Monitor, frames, reference: MoleculeFrames, preset, steps, wall, device, dtype):
    h_ref = h_of_r(reference.positions)
    dt_ps = preset.timestep_fs / 1000.0
    records = [RunRecord(k, round(monitor.last_good[b] * dt_ps, 9), collapse[1] if collapse else None,
                         round(collapse[0] * dt_ps, 9) if collapse else None, monitor.frames[b],
                         hr_error(density(monitor.counts[b]), h_ref) if monitor.frames[b] else math.nan)
               for b, (k, collapse) in enumerate(zip(frames, monitor.collapse, strict=True))]
    return StabilityResult(name, records, density(monitor.counts.sum(0)), steps, wall, str(device),
                           str(dtype).removeprefix("torch."))


def force_errors(potential: SAKEPotential, test: MoleculeFrames, device="cpu") -> tuple[float, float]:
    """Force MAE and RMSE over all components of the test set, in meV/Å (``sake_md.predict``)."""
    from ..devices import resolve_device
    from ..evaluate import per_frame_terms
    from ..predict import predict, statistic

    if test.forces is None:
        raise InputError(f"the test set {test.source} has no forces")
    energy, forces = predict(potential.to(resolve_device(device)), test.dataset, batch_size=32)
    totals = {k: float(v.sum()) for k, v in per_frame_terms(test.dataset, energy, forces).items()}
    return statistic(totals, "force_mae_meV_A"), statistic(totals, "force_rmse_meV_A")
