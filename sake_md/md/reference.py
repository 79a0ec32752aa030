"""Reference datasets for MD comparisons: frames (positions, and forces where known) of one molecule.

rMD17 ``.npz`` files (keys nuclear_charges, coords in Å, energies and forces in kcal/mol) are read with
numpy; any other file is read with ``ase.io.read(path, ":")``. Everything is returned in eV and Å.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from ..errors import DataError
from ..units import KCAL_PER_MOL


@dataclass
class ReferenceData:
    """numbers (N,), positions (F, N, 3) Å, energies (F,) eV or None, forces (F, N, 3) eV/Å or None."""

    numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray | None = None
    forces: np.ndarray | None = None
    source: str = ""

    def __len__(self):
        return len(self.positions)

    def atoms(self, frame: int) -> Atoms:
        return Atoms(numbers=self.numbers, positions=self.positions[frame])

    def check_same_molecule(self, numbers, label="structure"):
        if len(numbers) != len(self.numbers) or np.any(np.asarray(numbers) != self.numbers):
            raise DataError(f"{self.source} holds a different molecule (atomic numbers {self.numbers.tolist()}) "
                            f"from the {label} ({np.asarray(numbers).tolist()}); bonds are compared atom by atom, "
                            "so the atom order must be the same")


def read_reference(path) -> ReferenceData:
    path = Path(path)
    if not path.exists():
        raise DataError(f"reference dataset not found: {path}")
    if path.suffix == ".npz":
        return _read_rmd17(path)
    return _read_ase(path)


def _read_rmd17(path: Path) -> ReferenceData:
    data = np.load(path)
    missing = [k for k in ("nuclear_charges", "coords") if k not in data]
    if missing:
        raise DataError(f"{path} is not an rMD17 file: missing key(s) {', '.join(missing)} "
                        f"(found {', '.join(data.files)})")
    coords = np.asarray(data["coords"], dtype=np.float64)
    if coords.ndim != 3 or coords.shape[-1] != 3 or len(coords) == 0:
        raise DataError(f"{path}: coords must have shape (frames, atoms, 3), got {coords.shape}")
    energies = data["energies"] * KCAL_PER_MOL if "energies" in data else None
    forces = data["forces"] * KCAL_PER_MOL if "forces" in data else None
    return ReferenceData(np.asarray(data["nuclear_charges"], dtype=np.int64), coords, energies, forces, str(path))


def _read_ase(path: Path) -> ReferenceData:
    import ase.io

    try:
        frames = ase.io.read(path, ":")
    except Exception as e:  # ASE raises many kinds for unreadable files
        raise DataError(f"cannot read {path} with ASE: {type(e).__name__}: {e}") from e
    if not frames:
        raise DataError(f"{path} holds no frames")
    numbers = frames[0].numbers
    if any(len(a) != len(numbers) or np.any(a.numbers != numbers) for a in frames):
        raise DataError(f"{path} holds more than one molecule; a reference dataset is frames of one molecule")
    positions = np.stack([a.positions for a in frames])
    forces = energies = None
    if all(a.calc is not None and "forces" in a.calc.results for a in frames):
        forces = np.stack([a.calc.results["forces"] for a in frames])
    if all(a.calc is not None and "energy" in a.calc.results for a in frames):
        energies = np.array([a.calc.results["energy"] for a in frames])
    return ReferenceData(np.array(numbers), positions, energies, forces, str(path))
