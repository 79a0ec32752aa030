"""Labelling oracles for the data loop (``sake_md.learn``): ASE calculators at a dataset's level of theory.

``PySCFCalculator``: PBE/def2-SVP, rMD17's level of theory, with density fitting (def2-universal-jfit) and
PySCF's grid level 5: these settings reproduce rMD17's forces, and its energies but for a constant offset
(``md_runs/stability/oracle_check.py`` measures both; its record is beside it). PySCF is imported when a
calculation runs: ``pip install pyscf``.
"""

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from .errors import ConfigError

__all__ = ["OracleFailed", "PySCFCalculator"]


class OracleFailed(ConfigError):
    """The oracle could not label this structure (an SCF that does not converge): the loop skips the frame."""


class PySCFCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) of a molecule from restricted Kohn–Sham DFT in PySCF."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, xc: str = "pbe,pbe", basis: str = "def2-svp", auxbasis: str = "def2-universal-jfit",
                 grid_level: int = 5, conv_tol: float = 1e-10, charge: int = 0, spin: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.options = {"xc": xc, "basis": basis, "auxbasis": auxbasis, "grid_level": grid_level,
                        "conv_tol": conv_tol, "charge": charge, "spin": spin}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        try:
            from pyscf import dft, gto
        except ImportError as e:
            raise ConfigError(f"the pyscf oracle needs PySCF: pip install pyscf ({e})") from None
        o = self.options
        if self.atoms.pbc.any():
            raise ConfigError("the PySCF oracle labels molecules; this structure is periodic")
        mol = gto.M(atom=[(int(z), tuple(x)) for z, x in zip(self.atoms.numbers, self.atoms.positions, strict=True)],
                    unit="Angstrom", basis=o["basis"], charge=o["charge"], spin=o["spin"], verbose=0)
        mf = dft.RKS(mol).density_fit(auxbasis=o["auxbasis"])
        mf.xc, mf.conv_tol, mf.grids.level = o["xc"], o["conv_tol"], o["grid_level"]
        energy = mf.kernel()
        if not mf.converged:
            raise OracleFailed("the PySCF SCF did not converge for this structure")
        gradient = np.asarray(mf.nuc_grad_method().kernel())
        self.results = {"energy": energy * Hartree, "free_energy": energy * Hartree,
                        "forces": -gradient * Hartree / Bohr}
