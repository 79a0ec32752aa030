"""Reusable physics checks for any potential: symmetry, force consistency, batch = single."""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from sake_md.batch import collate
from sake_md.model import SAKEPotential


def energy_forces(potential: SAKEPotential, numbers, positions, dtype=torch.float64):
    """Single-structure energy (float) and forces (N, 3) as numpy."""
    batch = collate([numbers], [positions], potential.species_index, dtype)
    out = potential.predict(batch.species, batch.positions, batch.mask)
    return out["energy"].item(), out["forces"][0].detach().numpy()


def random_orthogonal(rng, reflect: bool) -> np.ndarray:
    R = Rotation.random(random_state=rng).as_matrix()
    return R @ np.diag([1, 1, -1]) if reflect else R


def assert_invariant(potential, numbers, positions, rng, atol=1e-10):
    """E invariant and F equivariant under rotation, reflection, translation and permutation."""
    E0, F0 = energy_forces(potential, numbers, positions)
    for reflect in (False, True):
        Q = random_orthogonal(rng, reflect)
        t = rng.normal(size=3) * 3
        E, F = energy_forces(potential, numbers, positions @ Q.T + t)
        np.testing.assert_allclose(E, E0, rtol=0, atol=atol)
        np.testing.assert_allclose(F, F0 @ Q.T, rtol=0, atol=atol)
    perm = rng.permutation(len(numbers))
    E, F = energy_forces(potential, numbers[perm], positions[perm])
    np.testing.assert_allclose(E, E0, rtol=0, atol=atol)
    np.testing.assert_allclose(F, F0[perm], rtol=0, atol=atol)


def assert_forces_are_gradient(potential, numbers, positions, h=1e-5, atol=1e-8):
    """Forces equal central finite differences of the energy (float64)."""
    _, F = energy_forces(potential, numbers, positions)
    fd = np.zeros_like(positions)
    for i in range(len(numbers)):
        for k in range(3):
            xp, xm = positions.copy(), positions.copy()
            xp[i, k] += h
            xm[i, k] -= h
            fd[i, k] = -(energy_forces(potential, numbers, xp)[0] - energy_forces(potential, numbers, xm)[0]) / (2 * h)
    np.testing.assert_allclose(F, fd, rtol=0, atol=atol)


def assert_batch_equals_single(potential, molecules, atol=1e-10):
    """A padded batch of mixed-size molecules gives the one-by-one energies and forces."""
    numbers = [m[0] for m in molecules]
    positions = [m[1] for m in molecules]
    batch = collate(numbers, positions, potential.species_index, torch.float64)
    out = potential.predict(batch.species, batch.positions, batch.mask)
    for b, (z, x) in enumerate(molecules):
        E, F = energy_forces(potential, z, x)
        np.testing.assert_allclose(out["energy"][b].item(), E, rtol=0, atol=atol)
        np.testing.assert_allclose(out["forces"][b, : len(z)].detach().numpy(), F, rtol=0, atol=atol)
        assert torch.all(out["forces"][b, len(z):] == 0)


SMALL_CONFIG = dict(hidden=16, heads=2, layers=2, radial=16)


def small_potential(seed=0, energy_scale=1.0, dtype=torch.float32, numbers=(1, 6, 8)) -> SAKEPotential:
    """A real but cheap SAKE potential (hidden 16, 2 layers) with seeded random weights."""
    from sake_md.model import ModelConfig

    torch.manual_seed(seed)
    return SAKEPotential(list(numbers), ModelConfig(**SMALL_CONFIG), energy_scale=energy_scale).to(dtype)
