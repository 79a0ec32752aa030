"""Batched molecular dynamics in torch: many replicas integrated together, one model call per potential per step.

Units are ASE's: positions Å, momenta amu·Å/(ASE time), energies eV, masses amu, time in ASE units
(multiply femtoseconds by ``ase.units.fs``). Shapes: B replicas of up to N atoms; ``mask`` (B, N)
marks real atoms, padding atoms have mass 1 and zero momenta and forces.

The integrators are written from small named steps (``half_kick``, ``drift``, ``update_forces``,
``o_step``, ``chain_half_step``), after ASE ``md/verlet.py`` and JAX-MD ``simulate.py``.
A force model is any callable ``positions (B, N, 3) -> (energy (B,) float64, forces (B, N, 3))``.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import units

from ..batch import atoms_to_batch
from ..compile import make_predictor
from ..errors import ConfigError, InputError
from ..inference import inference_potential
from ..model import SAKEPotential

__all__ = ["ReplicaState", "maxwell_boltzmann", "half_kick", "drift", "update_forces", "o_step", "verlet_step",
           "VelocityVerlet", "LangevinBAOAB", "NoseHooverChain", "chain_half_step", "SAKEForces", "StackedForces",
           "simulate"]

# a force field of the batched engine: positions (B, N, 3) -> (energies (B,), forces (B, N, 3))
ForceField = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ReplicaState:
    """Positions (B, N, 3), momenta (B, N, 3), masses (B, N, 1), mask (B, N); forces (B, N, 3) and
    potential energy (B,) of the current positions; ``thermostat`` holds an integrator's own variables."""

    positions: torch.Tensor
    momenta: torch.Tensor
    masses: torch.Tensor
    mask: torch.Tensor
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    thermostat: dict = field(default_factory=dict)

    @classmethod
    def from_atoms(cls, atoms_list, dtype=torch.float64, device="cpu") -> "ReplicaState":
        """Pad ASE Atoms (positions, masses, momenta) into one state."""
        B, n = len(atoms_list), max(len(a) for a in atoms_list)
        pos, mom, mass = np.zeros((B, n, 3)), np.zeros((B, n, 3)), np.ones((B, n, 1))
        mask = np.zeros((B, n), dtype=bool)
        for b, atoms in enumerate(atoms_list):
            k = len(atoms)
            pos[b, :k], mom[b, :k], mass[b, :k, 0] = atoms.positions, atoms.get_momenta(), atoms.get_masses()
            mask[b, :k] = True
        as_tensor = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
        return cls(as_tensor(pos), as_tensor(mom), as_tensor(mass), torch.tensor(mask, device=device))

    @property
    def degrees_of_freedom(self) -> torch.Tensor:
        """3 N per replica (no constraints, centre-of-mass motion included, as ASE's ``get_temperature``).
        Shape: (B,)."""
        return 3.0 * self.mask.sum(-1).to(self.positions.dtype)

    def kinetic_energy(self) -> torch.Tensor:
        """Σ p²/2m per replica in eV. Shape: (B,)."""
        return (0.5 * self.momenta.square() / self.masses).sum((-1, -2))

    def temperature(self) -> torch.Tensor:
        """Instantaneous kinetic temperature in K. Shape: (B,)."""
        return 2.0 * self.kinetic_energy() / (self.degrees_of_freedom * units.kB)


def maxwell_boltzmann(state: ReplicaState, temperature_K: float, generator: torch.Generator | None = None):
    """Draw momenta from the Maxwell–Boltzmann distribution at ``temperature_K`` (in place)."""
    noise = torch.randn(state.momenta.shape, generator=generator, dtype=state.momenta.dtype,
                        device=state.momenta.device)
    state.momenta = noise * torch.sqrt(state.masses * units.kB * temperature_K) * state.mask[..., None]


# --- the named steps ---------------------------------------------------------------------------------
def half_kick(state: ReplicaState, dt: float):
    """p ← p + dt/2 · F."""
    state.momenta += 0.5 * dt * state.forces


def drift(state: ReplicaState, dt: float):
    """x ← x + dt · p/m."""
    state.positions += dt * state.momenta / state.masses


def update_forces(state: ReplicaState, model: ForceField):
    """Forces and energies of the current positions: one call of ``model`` for the whole batch."""
    state.energy, forces = model(state.positions)
    state.forces = forces.to(state.positions.dtype) * state.mask[..., None]


def o_step(state: ReplicaState, dt: float, friction: float, temperature_K: float, generator=None):
    """Ornstein–Uhlenbeck part of Langevin dynamics, exact over ``dt``: p ← c₁ p + c₂ √(m kT) ξ."""
    c1 = math.exp(-friction * dt)
    c2 = math.sqrt(1.0 - c1 * c1)
    noise = torch.randn(state.momenta.shape, generator=generator, dtype=state.momenta.dtype,
                        device=state.momenta.device)
    kick = c2 * torch.sqrt(state.masses * units.kB * temperature_K) * noise
    state.momenta = (c1 * state.momenta + kick) * state.mask[..., None]


# --- integrators -------------------------------------------------------------------------------------
def verlet_step(state: ReplicaState, dt: float, model: ForceField):
    """Half-kick, drift, force, half-kick: velocity Verlet, and the Nosé–Hoover step's core."""
    half_kick(state, dt)
    drift(state, dt)
    update_forces(state, model)
    half_kick(state, dt)


class VelocityVerlet:
    """NVE: half-kick, drift, force, half-kick. ``timestep`` in ASE time units."""

    def __init__(self, timestep: float):
        self.dt = timestep

    def step(self, state: ReplicaState, model: ForceField):
        verlet_step(state, self.dt, model)


class LangevinBAOAB:
    """NVT Langevin with the BAOAB splitting (Leimkuhler & Matthews): half-kick, half-drift, O-step,
    half-drift, force, half-kick. ``friction`` in inverse ASE time units (e.g. ``0.01 / units.fs``)."""

    def __init__(self, timestep: float, temperature_K: float, friction: float, generator=None):
        self.dt, self.temperature_K, self.friction, self.generator = timestep, temperature_K, friction, generator

    def step(self, state: ReplicaState, model: ForceField):
        half_kick(state, self.dt)
        drift(state, 0.5 * self.dt)
        o_step(state, self.dt, self.friction, self.temperature_K, self.generator)
        drift(state, 0.5 * self.dt)
        update_forces(state, model)
        half_kick(state, self.dt)


class NoseHooverChain:
    """NVT Nosé–Hoover chain, one chain per replica (Martyna, Tuckerman & Klein; the symmetric splitting of JAX-MD's
    ``nvt_nose_hoover``): chain half-step, half-kick, drift, force, half-kick, chain half-step.

    ``tdamp`` is the thermostat time in ASE time units; thermostat masses Q₀ = g kT τ², Qᵢ = kT τ². The chain state
    is kept in ``state.thermostat`` as ``xi`` and ``v_xi``, each (B, chain)."""

    def __init__(self, timestep: float, temperature_K: float, tdamp: float, chain: int = 3):
        if chain < 1:
            raise ConfigError(f"a Nosé–Hoover chain needs at least one thermostat, got chain={chain}")
        self.dt, self.temperature_K, self.tdamp, self.chain = timestep, temperature_K, tdamp, chain

    @property
    def kT(self) -> float:
        return units.kB * self.temperature_K

    def masses(self, state: ReplicaState) -> torch.Tensor:
        """Thermostat masses. Shape: (B, chain)."""
        q = state.positions.new_full((state.positions.shape[0], self.chain), self.kT * self.tdamp**2)
        q[:, 0] = q[:, 0] * state.degrees_of_freedom
        return q

    def init(self, state: ReplicaState):
        for name in ("xi", "v_xi"):
            state.thermostat.setdefault(name, state.positions.new_zeros(state.positions.shape[0], self.chain))

    def step(self, state: ReplicaState, model: ForceField):
        self.init(state)
        chain_half_step(state, self.dt, self.kT, self.masses(state))
        verlet_step(state, self.dt, model)
        chain_half_step(state, self.dt, self.kT, self.masses(state))

    def conserved_energy(self, state: ReplicaState) -> torch.Tensor:
        """E_pot + E_kin + Σ ½ Q v_ξ² + g kT ξ₀ + kT Σ_{i>0} ξᵢ, conserved by the exact dynamics. Shape: (B,)."""
        self.init(state)
        xi, v_xi, q = state.thermostat["xi"], state.thermostat["v_xi"], self.masses(state)
        bath = (0.5 * q * v_xi**2).sum(-1) + self.kT * (state.degrees_of_freedom * xi[:, 0] + xi[:, 1:].sum(-1))
        return state.energy + state.kinetic_energy().to(torch.float64) + bath.to(torch.float64)


def _chain_force(v_xi, q, i, kinetic2, dof, kT):
    """G_i: the force on thermostat i. ``kinetic2`` is 2 E_kin of the particles. Shape: (B,)."""
    if i == 0:
        return (kinetic2 - dof * kT) / q[:, 0]
    return (q[:, i - 1] * v_xi[:, i - 1] ** 2 - kT) / q[:, i]


def chain_half_step(state: ReplicaState, dt: float, kT: float, q: torch.Tensor):
    """Propagate the chain and scale the momenta over dt/2 (one Trotter sweep down and up the chain)."""
    xi, v_xi = state.thermostat["xi"], state.thermostat["v_xi"]
    dof, M = state.degrees_of_freedom, v_xi.shape[1] - 1
    d2, d4, d8 = dt / 2, dt / 4, dt / 8
    kinetic2 = 2.0 * state.kinetic_energy()
    for i in range(M, -1, -1):  # down the chain
        scale = torch.exp(-d8 * v_xi[:, i + 1]) if i < M else 1.0
        v_xi[:, i] = scale * (scale * v_xi[:, i] + d4 * _chain_force(v_xi, q, i, kinetic2, dof, kT))
    xi += d2 * v_xi
    factor = torch.exp(-d2 * v_xi[:, 0])
    state.momenta *= factor[:, None, None]
    kinetic2 = kinetic2 * factor**2
    for i in range(M + 1):  # and back up
        scale = torch.exp(-d8 * v_xi[:, i + 1]) if i < M else 1.0
        v_xi[:, i] = scale * (scale * v_xi[:, i] + d4 * _chain_force(v_xi, q, i, kinetic2, dof, kT))


# --- force models ------------------------------------------------------------------------------------
class SAKEForces:
    """A ``SAKEPotential`` as a force model for a fixed padded batch of replicas: ``species`` and ``mask`` are (B, N);
    positions are cast to the potential's dtype for the call and forces come back in it (``update_forces`` casts them
    to the state's dtype). ``compile`` (True, False, "auto" for ``expected_calls`` calls) as
    ``sake_md.compile.make_predictor``; the batch's shape is fixed, so it compiles once."""

    def __init__(self, potential: SAKEPotential, species: torch.Tensor, mask: torch.Tensor, compile=False,
                 expected_calls: int | None = None, positions: torch.Tensor | None = None, verbose: bool = True):
        self.potential = inference_potential(potential, species.device)  # a frozen copy: the caller's stays as is
        self.species, self.mask = species, mask
        if compile == "auto" and positions is None:
            raise ConfigError("compile='auto' times an eager call and needs example positions (B, N, 3)")
        example = positions if positions is not None else torch.zeros(*mask.shape, 3)
        self.predict = make_predictor(self.potential, compile, species, example.to(mask.device), mask,
                                      expected_calls, verbose)

    @classmethod
    def for_atoms(cls, potential: SAKEPotential, atoms_list, device="cpu", compile=False,
                  expected_calls: int | None = None) -> "SAKEForces":
        """Validate the structures against the potential (unknown elements raise ``InputError``) and pad them."""
        batch = atoms_to_batch(atoms_list, potential, potential.dtype, device)
        if batch.pbc is not None:
            raise InputError("batched replicas integrate molecules only; for periodic structures use "
                             "SAKECalculator with ASE's integrators")
        return cls(potential, batch.species, batch.mask, compile, expected_calls, batch.positions)

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (B, N, 3) -> energy (B,) float64, forces (B, N, 3)."""
        out = self.predict(self.species, positions, self.mask)
        return out["energy"], out["forces"]


class StackedForces:
    """Several force models, each for a contiguous block of replicas: one call per model per step."""

    def __init__(self, models: Sequence[ForceField], sizes: Sequence[int]):
        if len(models) != len(sizes):
            raise ConfigError(f"{len(models)} models but {len(sizes)} block sizes")
        self.models, self.sizes = list(models), [int(s) for s in sizes]

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (B, N, 3) with B = Σ sizes -> energy (B,), forces (B, N, 3)."""
        if positions.shape[0] != sum(self.sizes):
            raise InputError(f"got {positions.shape[0]} replicas, the blocks hold {sum(self.sizes)}")
        results = [model(x) for model, x in zip(self.models, positions.split(self.sizes), strict=True)]
        return (torch.cat([e.to(torch.float64) for e, _ in results]),
                torch.cat([f.to(positions.dtype) for _, f in results]))


# --- the loop ----------------------------------------------------------------------------------------
def simulate(state: ReplicaState, integrator, model: ForceField, steps: int, interval: int = 1,
             observer: Callable[[int, ReplicaState], bool | None] | None = None) -> int:
    """Integrate ``steps`` steps; call ``observer(step, state)`` every ``interval`` steps (and at step 0), which may
    return True to stop early. Returns the number of steps done."""
    with torch.no_grad():
        if state.forces is None:
            update_forces(state, model)
        if observer is not None and observer(0, state):
            return 0
        for step in range(1, steps + 1):
            integrator.step(state, model)
            if observer is not None and step % interval == 0 and observer(step, state):
                return step
    return steps
