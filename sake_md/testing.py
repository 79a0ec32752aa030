"""Physics checks for any SAKE potential, for a variant's own tests (as e3nn's ``assert_equivariant`` and NequIP's
test mixins): symmetry, forces = −∂E/∂x, and a padded batch = its structures one by one.

Each ``check_*`` returns nothing and raises ``AssertionError`` with a message that names the symmetry or the structure
and the largest deviation; they need neither pytest nor the repository's tests. A structure is an ASE ``Atoms`` or a
pair (numbers (N,), positions (N, 3) Å). The tolerances assume a float64 potential (``potential.double()``): float32
rounding alone is about 1e-6 eV."""

import numpy as np

from .batch import collate
from .model import SAKEPotential

__all__ = ["energy_forces", "random_orthogonal", "check_invariance", "check_forces_are_gradients",
           "check_batch_equals_single"]


def _structure(atoms) -> tuple[np.ndarray, np.ndarray]:
    """(numbers (N,), positions (N, 3) float64) of ASE Atoms or of a (numbers, positions) pair."""
    numbers, positions = (atoms.numbers, atoms.positions) if hasattr(atoms, "numbers") else atoms
    return np.asarray(numbers), np.array(positions, dtype=np.float64)


def _check_close(actual, expected, atol: float, what: str) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    worst = float(np.max(np.abs(actual - expected), initial=0.0))
    if not worst <= atol:  # also refuses NaN
        raise AssertionError(f"{what}: largest deviation {worst:.3g} exceeds atol {atol:g}")


def energy_forces(potential: SAKEPotential, numbers, positions, dtype=None) -> tuple[float, np.ndarray]:
    """Energy (eV, a float) and forces (N, 3) eV/Å of one structure, in ``dtype`` (default: the potential's)."""
    batch = collate([np.asarray(numbers)], [np.asarray(positions)], potential.species_index,
                    dtype or potential.dtype, potential.device)
    out = potential.predict(batch.species, batch.positions, batch.mask)
    return out["energy"].item(), out["forces"][0].detach().cpu().numpy()


def random_orthogonal(rng: np.random.Generator, reflect: bool = False) -> np.ndarray:
    """A random rotation (Haar-distributed, from the QR decomposition of a Gaussian matrix), times a reflection if
    ``reflect``. Shape: (3, 3), det +1 or −1."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # the sign convention that makes q uniform over O(3)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q @ np.diag([1.0, 1.0, -1.0]) if reflect else q


def check_invariance(potential: SAKEPotential, atoms, atol: float = 1e-10, seed: int | np.random.Generator = 0) -> None:
    """E invariant and F equivariant (F(Qx + t) = F(x) Qᵀ) under a random rotation, a rotation with a reflection, each
    with a random translation, and a random permutation of the atoms (eV, eV/Å), drawn from ``seed`` (or generator)."""
    numbers, positions = _structure(atoms)
    rng = np.random.default_rng(seed)
    E0, F0 = energy_forces(potential, numbers, positions)
    for name, reflect in (("rotation", False), ("reflection", True)):
        Q, t = random_orthogonal(rng, reflect), rng.normal(size=3) * 3
        E, F = energy_forces(potential, numbers, positions @ Q.T + t)
        _check_close(E, E0, atol, f"energy changed under a {name} and translation")
        _check_close(F, F0 @ Q.T, atol, f"forces did not rotate with the structure under a {name}")
    perm = rng.permutation(len(numbers))
    E, F = energy_forces(potential, numbers[perm], positions[perm])
    _check_close(E, E0, atol, "energy changed under a permutation of the atoms")
    _check_close(F, F0[perm], atol, "forces did not follow a permutation of the atoms")


def check_forces_are_gradients(potential: SAKEPotential, atoms, h: float = 1e-5, atol: float = 1e-8) -> None:
    """Forces equal central finite differences of the energy, −(E(x + h e) − E(x − h e)) / 2h, for every
    atom and direction (h in Å, atol in eV/Å); 6N + 1 energy calls."""
    numbers, positions = _structure(atoms)
    _, F = energy_forces(potential, numbers, positions)
    fd = np.zeros_like(positions)
    for i, k in np.ndindex(fd.shape):
        xp, xm = positions.copy(), positions.copy()
        xp[i, k] += h
        xm[i, k] -= h
        fd[i, k] = -(energy_forces(potential, numbers, xp)[0] - energy_forces(potential, numbers, xm)[0]) / (2 * h)
    _check_close(F, fd, atol, f"forces differ from finite differences of the energy (h = {h:g} Å)")


def check_batch_equals_single(potential: SAKEPotential, structures, atol: float = 1e-10) -> None:
    """A padded batch of ``structures`` (mixed sizes: the smaller ones padded) gives each structure's own
    energy and forces, and exactly zero force on padding atoms."""
    numbers, positions = zip(*(_structure(s) for s in structures), strict=True)
    batch = collate(list(numbers), list(positions), potential.species_index, potential.dtype, potential.device)
    out = potential.predict(batch.species, batch.positions, batch.mask)
    forces = out["forces"].detach().cpu().numpy()
    for b, (z, x) in enumerate(zip(numbers, positions, strict=True)):
        E, F = energy_forces(potential, z, x)
        _check_close(out["energy"][b].item(), E, atol, f"structure {b} of the batch: energy differs from its own")
        _check_close(forces[b, :len(z)], F, atol, f"structure {b} of the batch: forces differ from their own")
        if np.any(forces[b, len(z):] != 0):
            raise AssertionError(f"structure {b} of the batch: non-zero forces on its padding atoms")
