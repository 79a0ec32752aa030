"""The batched replica engine: agreement with ASE, thermostats that sample the right temperature,
replicas that never interact, several potentials in one batch."""

import ase.build
import numpy as np
import pytest
import torch
from ase import units
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

from sake_md import SAKECalculator
from sake_md.errors import InputError
from sake_md.md.replicas import (
    LangevinBAOAB,
    NoseHooverChain,
    ReplicaState,
    SAKEForces,
    StackedForces,
    VelocityVerlet,
    maxwell_boltzmann,
    simulate,
)
from sake_md.md.run import thermalize

from . import physics
from .analytic import HarmonicTrap, PairMorse


def small_potential(seed=0, dtype=torch.float64):
    return physics.small_potential(seed, dtype=dtype)


def ethanol(temperature_K=300.0, seed=0):
    atoms = ase.build.molecule("CH3CH2OH")
    thermalize(atoms, temperature_K, np.random.default_rng(seed))
    return atoms


def trajectory(state, integrator, model, steps):
    """Positions after every step. Shape: (steps, B, N, 3)."""
    frames = []
    simulate(state, integrator, model, steps, 1, lambda step, s: frames.append(s.positions.clone()) and None)
    return torch.stack(frames[1:])


def test_one_replica_reproduces_ase_velocity_verlet():
    potential = small_potential()
    atoms = ethanol()
    state = ReplicaState.from_atoms([atoms])
    model = SAKEForces.for_atoms(potential, [atoms])
    dt = 0.5 * units.fs
    ours = trajectory(state, VelocityVerlet(dt), model, 100)[:, 0].numpy()

    atoms.calc = SAKECalculator(potential, dtype="float64")
    dyn = AseVelocityVerlet(atoms, dt)
    theirs = []
    dyn.attach(lambda: theirs.append(atoms.positions.copy()), interval=1)
    dyn.run(100)
    theirs = np.array(theirs[1:])
    moved = np.abs(theirs[-1] - theirs[0]).max()
    assert moved > 1e-2, "the molecule should move, or the comparison means nothing"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(state.momenta[0].numpy(), atoms.get_momenta(), rtol=0, atol=1e-10)


def test_replicas_never_interact():
    potential = small_potential()
    atoms_list = [ethanol(seed=k) for k in range(3)]
    model = SAKEForces.for_atoms(potential, atoms_list)
    dt = 0.5 * units.fs

    def run(kick_first: bool, integrator):
        state = ReplicaState.from_atoms(atoms_list)
        if kick_first:
            state.positions[0] += 0.3 * torch.randn(state.positions[0].shape, dtype=torch.float64)
        return trajectory(state, integrator, model, 30)

    for make in (lambda: VelocityVerlet(dt),
                 lambda: LangevinBAOAB(dt, 300.0, 0.02 / units.fs, torch.Generator().manual_seed(1))):
        base, kicked = run(False, make()), run(True, make())
        assert (base[:, 0] - kicked[:, 0]).abs().max() > 0.1
        torch.testing.assert_close(kicked[:, 1:], base[:, 1:], rtol=0, atol=1e-12)

    alone = trajectory(ReplicaState.from_atoms(atoms_list[1:2]), VelocityVerlet(dt),
                       SAKEForces.for_atoms(potential, atoms_list[1:2]), 30)
    batched = run(False, VelocityVerlet(dt))
    torch.testing.assert_close(batched[:, 1], alone[:, 0], rtol=0, atol=1e-10)


def test_several_potentials_one_call_each():
    first, second = small_potential(0), small_potential(1)
    atoms_list = [ethanol(seed=k) for k in range(4)]
    calls = []

    def counted(model):
        def call(x):
            calls.append(x.shape[0])
            return model(x)
        return call

    stacked = StackedForces([counted(SAKEForces.for_atoms(first, atoms_list[:3])),
                             counted(SAKEForces.for_atoms(second, atoms_list[3:]))], [3, 1])
    dt = 0.5 * units.fs
    both = trajectory(ReplicaState.from_atoms(atoms_list), VelocityVerlet(dt), stacked, 10)
    assert calls == [3, 1] * 11  # initial forces + one call per potential per step
    alone = trajectory(ReplicaState.from_atoms(atoms_list[3:]), VelocityVerlet(dt),
                       SAKEForces.for_atoms(second, atoms_list[3:]), 10)
    torch.testing.assert_close(both[:, 3], alone[:, 0], rtol=0, atol=1e-10)


def kinetic_temperatures(state, integrator, model, steps, burn_in):
    temps = []
    simulate(state, integrator, model, steps, 1,
             lambda step, s: temps.append(s.temperature().clone()) if step > burn_in else None)
    return torch.stack(temps)  # (steps - burn_in, B)


@pytest.mark.parametrize("target", [150.0, 600.0])
def test_langevin_samples_the_temperature_harmonic(target):
    """Independent 3-D oscillators: ⟨T⟩ = target and std(T)/T = √(2/3N) exactly in the canonical ensemble."""
    B, N = 64, 9
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(B, N, 3, generator=gen, dtype=torch.float64)
    state = ReplicaState(centres.clone(), torch.zeros(B, N, 3, dtype=torch.float64),
                         torch.full((B, N, 1), 12.0, dtype=torch.float64), torch.ones(B, N, dtype=torch.bool))
    model = HarmonicTrap(centres, k=20.0)
    integrator = LangevinBAOAB(0.5 * units.fs, target, 0.05 / units.fs, gen)
    temps, potential = [], []

    def observe(step, s):
        if step > 300:
            temps.append(s.temperature().clone())
            potential.append(s.energy.clone())

    simulate(state, integrator, model, 1500, 1, observe)
    temps, potential = torch.stack(temps), torch.stack(potential)
    # ~60 independent samples per replica (correlation time ≈ 1/(2γ) = 20 steps) → σ(mean) ≈ 0.4 %
    assert temps.mean().item() == pytest.approx(target, rel=0.02)
    assert (temps.std() / temps.mean()).item() == pytest.approx(np.sqrt(2 / (3 * N)), rel=0.1)
    # BAOAB samples the positions of a harmonic system exactly: ⟨E_pot⟩ = 3N/2 kT
    assert potential.mean().item() == pytest.approx(1.5 * N * units.kB * target, rel=0.03)


def test_langevin_samples_the_temperature_sake():
    potential = small_potential()
    atoms_list = [ethanol(300.0, seed=k) for k in range(16)]
    state = ReplicaState.from_atoms(atoms_list)
    integrator = LangevinBAOAB(0.5 * units.fs, 300.0, 0.1 / units.fs, torch.Generator().manual_seed(0))
    temps = kinetic_temperatures(state, integrator, SAKEForces.for_atoms(potential, atoms_list), 300, 60)
    # 16 replicas × ~50 independent samples, σ(T)/T ≈ 0.27 per sample → σ(mean) ≈ 1 %
    assert temps.mean().item() == pytest.approx(300.0, rel=0.05)


def morse_cluster(B, gen, temperature_K):
    grid = torch.tensor([[0, 0, 0], [1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5], [1.5, 1.5, 0], [1.5, 0, 1.5]],
                        dtype=torch.float64)
    N = len(grid)
    state = ReplicaState(grid.expand(B, N, 3).clone(), torch.zeros(B, N, 3, dtype=torch.float64),
                         torch.full((B, N, 1), 12.0, dtype=torch.float64), torch.ones(B, N, dtype=torch.bool))
    maxwell_boltzmann(state, temperature_K, gen)
    return state, PairMorse(depth=0.5, alpha=1.2, r0=1.6)


def test_nose_hoover_samples_the_temperature():
    """A bound, anharmonic Morse cluster (chaotic enough for a chain of 3) at 400 K."""
    state, model = morse_cluster(32, torch.Generator().manual_seed(0), 400.0)
    integrator = NoseHooverChain(0.5 * units.fs, 400.0, tdamp=10 * units.fs, chain=3)
    temps = kinetic_temperatures(state, integrator, model, 1000, burn_in=200)
    # 32 replicas × ~40 thermostat periods; σ(T)/T ≈ 0.33 per sample → a 5 % band is > 5σ
    assert temps.mean().item() == pytest.approx(400.0, rel=0.05)


def test_nose_hoover_conserves_its_extended_energy_to_second_order():
    """max |H_ext(t) − H_ext(0)| over 100 fs is small and shrinks ~4× when the time step halves."""
    def max_error(dt_fs):
        state, model = morse_cluster(4, torch.Generator().manual_seed(0), 400.0)
        integrator = NoseHooverChain(dt_fs * units.fs, 400.0, tdamp=10 * units.fs, chain=3)
        conserved = []
        simulate(state, integrator, model, int(100 / dt_fs), 1,
                 lambda step, s: conserved.append(integrator.conserved_energy(s)) and None)
        conserved = torch.stack(conserved)
        return (conserved - conserved[0]).abs().max().item()

    errors = [max_error(0.5), max_error(0.25)]
    kinetic_scale = 1.5 * 6 * units.kB * 400.0
    assert errors[0] < 2e-3 * kinetic_scale
    assert 3.0 < errors[0] / errors[1] < 6.0


def test_unknown_element_refused_by_the_engine():
    with pytest.raises(InputError, match="not trained on"):
        SAKEForces.for_atoms(small_potential(), [ase.build.molecule("CH3Cl")])
