"""Fixtures for the tests: a small real potential, and the tests' names for the physics checks, which ship
in the package (``sake_md.testing``: symmetry, forces = -dE/dx, batch = single)."""

import torch

from sake_md.model import SAKEPotential
from sake_md.testing import check_batch_equals_single, check_forces_are_gradients, check_invariance, energy_forces

__all__ = ["energy_forces", "assert_invariant", "assert_forces_are_gradient", "assert_batch_equals_single",
           "SMALL_CONFIG", "small_potential"]


def assert_invariant(potential, numbers, positions, rng, atol=1e-10):
    check_invariance(potential, (numbers, positions), atol, seed=rng)


def assert_forces_are_gradient(potential, numbers, positions, h=1e-5, atol=1e-8):
    check_forces_are_gradients(potential, (numbers, positions), h, atol)


def assert_batch_equals_single(potential, molecules, atol=1e-10):
    check_batch_equals_single(potential, molecules, atol)

SMALL_CONFIG = dict(hidden=16, heads=2, layers=2, radial=16)


def small_potential(seed=0, energy_scale=1.0, dtype=torch.float32, numbers=(1, 6, 8)) -> SAKEPotential:
    """A real but cheap SAKE potential (hidden 16, 2 layers) with seeded random weights."""
    from sake_md.model import ModelConfig

    torch.manual_seed(seed)
    return SAKEPotential(list(numbers), ModelConfig(**SMALL_CONFIG), energy_scale=energy_scale).to(dtype)
