"""The one unit convention: ASE's (eV, Å, amu, ASE time). Conversions happen here, at the edges."""

from ase import units

from .errors import InputError

__all__ = ["KCAL_PER_MOL", "ENERGY_UNITS", "LENGTH_UNITS", "energy_factor", "length_factor"]

KCAL_PER_MOL = units.kcal / units.mol  # eV, 0.0433641...

ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3, "kcal/mol": KCAL_PER_MOL, "kJ/mol": units.kJ / units.mol,
                "Hartree": units.Hartree}
LENGTH_UNITS = {"Å": 1.0, "A": 1.0, "Angstrom": 1.0, "Bohr": units.Bohr, "nm": 10.0}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    if unit not in ENERGY_UNITS:
        raise InputError(f"unknown energy unit {unit!r}; known: {', '.join(ENERGY_UNITS)}")
    return ENERGY_UNITS[unit]


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    if unit not in LENGTH_UNITS:
        raise InputError(f"unknown length unit {unit!r}; known: {', '.join(LENGTH_UNITS)}")
    return LENGTH_UNITS[unit]
