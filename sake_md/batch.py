"""Turn structures (ASE Atoms or arrays) into padded tensors, validating them on the way in."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase.data import chemical_symbols

from .errors import InputError

__all__ = ["Batch", "check_structure", "collate", "atoms_to_batch"]


@dataclass
class Batch:
    """Padded structures. Shapes: species (B, N), positions (B, N, 3), mask (B, N); for a batch with a
    periodic structure also cell (B, 3, 3) Å (rows are lattice vectors) and pbc (B, 3), else None."""

    species: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    cell: torch.Tensor | None = None
    pbc: torch.Tensor | None = None


def check_structure(numbers: np.ndarray, positions: np.ndarray, known: Sequence[int], pbc=None, label="structure",
                    periodic_ok: bool = False):
    """Raise ``InputError`` for anything the model would get wrong; ``periodic_ok`` for sparse-mode models
    (their neighbour lists check the cell and atoms on top of each other)."""
    if len(numbers) == 0:
        raise InputError(f"{label} has no atoms")
    if pbc is not None and np.any(pbc) and not periodic_ok:
        raise InputError(f"{label} is periodic (pbc={list(map(bool, pbc))}); this SAKE model is dense (all pairs of a "
                         "molecule, no minimum image) and would compute the wrong energy. Periodic systems need the "
                         "neighbour-list mode: a model trained with a cutoff (sake-md train --cutoff 5.0). For a "
                         "molecule, set atoms.pbc = False.")
    bad = ~np.isfinite(positions).all(-1)
    if bad.any():
        raise InputError(f"{label} has non-finite positions at atom(s) {np.flatnonzero(bad).tolist()[:10]}")
    unknown = sorted(set(int(z) for z in numbers) - set(known))
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        knows = ", ".join(chemical_symbols[z] for z in known)
        raise InputError(f"{label} contains element(s) the model was not trained on: {names}; it knows {knows}")


def collate(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], species_index: torch.Tensor,
            dtype: torch.dtype = torch.float32, device="cpu", cells: Sequence | None = None,
            pbc: Sequence | None = None) -> Batch:
    """Pad a list of structures into one ``Batch``. ``species_index`` maps Z to the model's species index;
    ``cells`` (3, 3) and ``pbc`` (3,) per structure are kept when some structure is periodic."""
    B, n_max, index = len(numbers), max(len(z) for z in numbers), species_index.cpu().numpy()
    species, pos, mask = np.zeros((B, n_max), np.int64), np.zeros((B, n_max, 3)), np.zeros((B, n_max), bool)
    for b, (z, x) in enumerate(zip(numbers, positions, strict=True)):
        n = len(z)
        species[b, :n], pos[b, :n], mask[b, :n] = index[np.asarray(z)], x, True
    batch = Batch(torch.from_numpy(species).to(device), torch.from_numpy(pos).to(device=device, dtype=dtype),
                  torch.from_numpy(mask).to(device))
    if pbc is not None and np.any([np.any(p) for p in pbc]):
        batch.cell = torch.from_numpy(np.array([np.asarray(c, dtype=np.float64).reshape(3, 3) for c in cells])
                                      ).to(device=device, dtype=dtype)
        batch.pbc = torch.from_numpy(np.array([np.asarray(p, dtype=bool).reshape(3) for p in pbc])).to(device)
    return batch


def atoms_to_batch(atoms_list, potential, dtype, device) -> Batch:
    """Validate ASE Atoms against ``potential`` and pad them into a batch."""
    for k, atoms in enumerate(atoms_list):
        label = "structure" if len(atoms_list) == 1 else f"structure {k}"
        check_structure(atoms.numbers, atoms.positions, potential.atomic_numbers, atoms.pbc, label,
                        periodic_ok=potential.cutoff is not None)
    return collate([a.numbers for a in atoms_list], [a.positions for a in atoms_list], potential.species_index,
                   dtype, device, [a.cell.array for a in atoms_list], [a.pbc for a in atoms_list])
