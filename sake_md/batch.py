"""Turn structures (ASE Atoms or arrays) into padded tensors, validating them on the way in."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase.data import chemical_symbols

from .errors import InputError


@dataclass
class Batch:
    """Padded molecules. Shapes: species (B, N), positions (B, N, 3), mask (B, N)."""

    species: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor

    @property
    def n_atoms(self) -> torch.Tensor:
        return self.mask.sum(-1)


def check_structure(numbers: np.ndarray, positions: np.ndarray, known: Sequence[int], pbc=None, label="structure"):
    """Raise ``InputError`` for anything the dense molecular model would get wrong."""
    if len(numbers) == 0:
        raise InputError(f"{label} has no atoms")
    if pbc is not None and np.any(pbc):
        raise InputError(
            f"{label} is periodic (pbc={list(map(bool, pbc))}); this SAKE model is molecular (dense, all "
            "pairs, no minimum image) and would compute the wrong energy. Periodic systems need the "
            "neighbour-list mode, which sake_md does not provide yet; set atoms.pbc = False for a molecule."
        )
    bad = ~np.isfinite(positions).all(-1)
    if bad.any():
        raise InputError(f"{label} has non-finite positions at atom(s) {np.flatnonzero(bad).tolist()[:10]}")
    unknown = sorted(set(int(z) for z in numbers) - set(known))
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        knows = ", ".join(chemical_symbols[z] for z in known)
        raise InputError(f"{label} contains element(s) the model was not trained on: {names}; it knows {knows}")


def collate(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], species_index: torch.Tensor,
            dtype: torch.dtype = torch.float32, device="cpu") -> Batch:
    """Pad a list of molecules into one ``Batch``. ``species_index`` maps Z to the model's species index."""
    n_max = max(len(z) for z in numbers)
    B = len(numbers)
    species = np.zeros((B, n_max), dtype=np.int64)
    pos = np.zeros((B, n_max, 3), dtype=np.float64)
    mask = np.zeros((B, n_max), dtype=bool)
    index = species_index.cpu().numpy()
    for b, (z, x) in enumerate(zip(numbers, positions, strict=True)):
        n = len(z)
        species[b, :n] = index[np.asarray(z)]
        pos[b, :n] = x
        mask[b, :n] = True
    return Batch(torch.from_numpy(species).to(device), torch.from_numpy(pos).to(device=device, dtype=dtype),
                 torch.from_numpy(mask).to(device))


def atoms_to_batch(atoms_list, potential, dtype, device) -> Batch:
    """Validate ASE Atoms against ``potential`` and pad them into a batch."""
    for k, atoms in enumerate(atoms_list):
        label = "structure" if len(atoms_list) == 1 else f"structure {k}"
        check_structure(atoms.numbers, atoms.positions, potential.atomic_numbers, atoms.pbc, label)
    return collate([a.numbers for a in atoms_list], [a.positions for a in atoms_list], potential.species_index,
                   dtype, device)
