"""Reference frames for MD comparisons: a data file read by ``data.read_dataset`` (rMD17/sGDML npz,
extended XYZ, ASE database; eV and Å), labels optional, whose frames are all one molecule in one atom order."""

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..data import Dataset, read_dataset
from ..errors import DataError


@dataclass
class MoleculeFrames:
    """A ``Dataset`` of one molecule: numbers (N,), positions (F, N, 3) Å, forces (F, N, 3) eV/Å or None
    when the file has no force labels."""

    dataset: Dataset

    def __post_init__(self):
        d = self.dataset
        numbers = d.numbers[0]
        if any(len(z) != len(numbers) or np.any(z != numbers) for z in d.numbers):
            raise DataError(f"{d.source} holds more than one molecule; a reference dataset is frames of one "
                            "molecule in one atom order")
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.positions = np.stack(d.positions)
        forces = np.stack(d.forces)
        self.forces = None if np.isnan(forces).any() else forces

    @property
    def source(self) -> str:
        return self.dataset.source

    def __len__(self):
        return len(self.dataset)

    def atoms(self, frame: int) -> Atoms:
        return Atoms(numbers=self.numbers, positions=self.positions[frame])

    def check_same_molecule(self, numbers, label="structure"):
        if len(numbers) != len(self.numbers) or np.any(np.asarray(numbers) != self.numbers):
            raise DataError(f"{self.source} holds a different molecule (atomic numbers {self.numbers.tolist()}) "
                            f"from the {label} ({np.asarray(numbers).tolist()}); bonds are compared atom by atom, "
                            "so the atom order must be the same")


def read_reference(path, **read_options) -> MoleculeFrames:
    """``data.read_dataset(path, labelled=False, **read_options)``, checked to hold frames of one molecule."""
    return MoleculeFrames(read_dataset(path, labelled=False, **read_options))
