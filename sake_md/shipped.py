"""The potentials that ship with sake_md, found the same way in a wheel, an sdist and a source checkout.

Installed from a wheel or an sdist they are package data, ``sake_md/potentials/`` (pyproject.toml maps
the repository's top-level ``potentials/`` onto that package). In an editable install, or a checkout on
PYTHONPATH, ``sake_md`` is the source folder, and they are the repository's ``potentials/`` beside it.
"""

from importlib.resources import files
from pathlib import Path

from .errors import CheckpointError

DEFAULT_POTENTIAL = "sake_ethanol.pt"


def shipped_potential(name: str | None = None) -> Path:
    """The path of a shipped potential, ``DEFAULT_POTENTIAL`` when ``name`` is None."""
    what = "potential" if name else "default potential"
    name = name or DEFAULT_POTENTIAL
    installed = files("sake_md").joinpath("potentials", name)
    checkout = Path(__file__).resolve().parents[1] / "potentials" / name
    # pip unpacks wheels, so the installed resource is a real file; one inside a zip would not be a Path
    for candidate in (installed, checkout):
        if isinstance(candidate, Path) and candidate.is_file():
            return candidate
    raise CheckpointError(f"the shipped {what} {name} was not found (looked in {installed} and {checkout}); "
                          "pass one with --potential CKPT.")
