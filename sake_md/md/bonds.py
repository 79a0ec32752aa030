"""The bond criterion of the MD stability protocol (docs/stability.md, after Fu et al. 2023).

Bonds are the connectivity of one frame (ASE ``natural_cutoffs`` + ``NeighborList``); a frame has
collapsed when any bond deviates from its reference length by more than ``tolerance`` (0.5 Å).
"""

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import NeighborList, natural_cutoffs

from ..errors import InputError

TOLERANCE = 0.5  # Å


def find_bonds(atoms: Atoms) -> np.ndarray:
    """Pairs (i, j), i < j, within the sum of their natural covalent radii plus ASE's default skin (0.3 Å),
    as MDsim does (without the skin, C–H bonds of 1.09 Å fall outside 0.76 + 0.31 Å). Shape: (M, 2)."""
    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False)
    nl.update(atoms)
    pairs = [(i, j) for i in range(len(atoms)) for j in nl.get_neighbors(i)[0] if i < j]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def bond_lengths(positions: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Shape: positions (..., N, 3), bonds (M, 2) -> (..., M)."""
    return np.linalg.norm(positions[..., bonds[:, 0], :] - positions[..., bonds[:, 1], :], axis=-1)


@dataclass
class BrokenBond:
    """The bond that broke first in a frame: atom indices, elements, length and reference length (Å)."""

    i: int
    j: int
    symbols: tuple[str, str]
    length: float
    reference: float

    def __str__(self):
        return (f"bond {self.symbols[0]}{self.i}–{self.symbols[1]}{self.j} is {self.length:.3f} Å, "
                f"reference {self.reference:.3f} Å (|Δ| > {TOLERANCE} Å)")


@dataclass
class BondCriterion:
    """Bonds (M, 2), reference lengths (M,) in Å, the atomic numbers (N,) and the tolerance in Å."""

    bonds: np.ndarray
    reference: np.ndarray
    numbers: np.ndarray
    tolerance: float = TOLERANCE

    @classmethod
    def from_atoms(cls, atoms: Atoms, reference_positions: np.ndarray | None = None) -> "BondCriterion":
        """Bonds of ``atoms``; reference lengths: the mean over ``reference_positions`` (F, N, 3), else
        the lengths in ``atoms`` itself."""
        bonds = find_bonds(atoms)
        if len(bonds) == 0:
            raise InputError("the structure has no bonds (natural cutoffs), so collapse cannot be detected")
        frames = atoms.positions[None] if reference_positions is None else np.asarray(reference_positions)
        reference = bond_lengths(frames, bonds).mean(0)
        return cls(bonds, reference, np.array(atoms.numbers))

    def first_broken(self, positions: np.ndarray) -> BrokenBond | None:
        """The most deviating broken bond of one frame (N, 3), or None while the frame is intact."""
        lengths = bond_lengths(np.asarray(positions), self.bonds)
        dev = np.abs(lengths - self.reference)  # NaN positions give NaN
        broken = ~(dev <= self.tolerance)  # NaN counts as broken
        if not broken.any():
            return None
        k = int(np.nanargmax(np.where(broken, np.nan_to_num(dev, nan=np.inf), -1.0)))
        i, j = (int(a) for a in self.bonds[k])
        return BrokenBond(i, j, (chemical_symbols[self.numbers[i]], chemical_symbols[self.numbers[j]]),
                          float(lengths[k]), float(self.reference[k]))
