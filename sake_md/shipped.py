"""The potentials that ship with sake_md, found the same way in a wheel, an sdist and a source checkout.

Installed from a wheel or an sdist they are package data, ``sake_md/potentials/`` (pyproject.toml maps
the repository's top-level ``potentials/`` onto that package). In an editable install, or a checkout on
PYTHONPATH, ``sake_md`` is the source folder, and they are the repository's ``potentials/`` beside it.
"""

from importlib.resources import files
from pathlib import Path

from .console import notify
from .errors import CheckpointError

__all__ = ["DEFAULT_POTENTIAL", "shipped_potential", "shipped_potentials", "matching_potential", "potential_for"]

DEFAULT_POTENTIAL = "sake_ethanol.pt"


def _folders() -> tuple:
    """Where the shipped potentials are looked for, in order: the installed package data, a checkout's folder."""
    return files("sake_md").joinpath("potentials"), Path(__file__).resolve().parents[1] / "potentials"


def shipped_potential(name: str | None = None) -> Path:
    """The path of a shipped potential, ``DEFAULT_POTENTIAL`` when ``name`` is None."""
    what = "potential" if name else "default potential"
    name = name or DEFAULT_POTENTIAL
    installed, checkout = (folder.joinpath(name) for folder in _folders())
    # pip unpacks wheels, so the installed resource is a real file; one inside a zip would not be a Path
    for candidate in (installed, checkout):
        if isinstance(candidate, Path) and candidate.is_file():
            return candidate
    raise CheckpointError(f"the shipped {what} {name} was not found (looked in {installed} and {checkout}); "
                          "pass one with --potential CKPT.")


def shipped_potentials() -> list[Path]:
    """The top-level ``*.pt`` of the first shipped folder found (not its subfolders, e.g. the study's ablation
    models), the default first, then by name."""
    folder = next((f for f in _folders() if isinstance(f, Path) and f.is_dir()), None)
    found = folder.glob("*.pt") if folder else []
    return sorted(found, key=lambda p: (p.name != DEFAULT_POTENTIAL, p.name))


def matching_potential(atoms) -> Path | None:
    """The first of ``shipped_potentials`` whose recorded training compositions include the composition of
    ``atoms``, or None (none does, or none records them)."""
    from .checkpoint import read_checkpoint, trained_compositions
    from .data import composition

    wanted = composition(atoms.numbers)
    for path in shipped_potentials():
        if wanted in trained_compositions(read_checkpoint(path)):
            return path
    return None


def potential_for(atoms) -> Path:
    """The shipped potential for ``atoms`` when none is given: ``matching_potential`` (said on stderr when it is
    not the default), else the default (with a warning: no shipped potential was trained on that composition)."""
    match = matching_potential(atoms)
    if match is None:
        notify(f"warning: no shipped potential was trained on {atoms.get_chemical_formula()}; using the default "
               f"{DEFAULT_POTENTIAL} outside its training data (pass --potential CKPT)")
        return shipped_potential()
    if match.name != DEFAULT_POTENTIAL:
        notify(f"no potential given: using the shipped {match.name}, trained on {atoms.get_chemical_formula()}")
    return match
