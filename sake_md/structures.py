"""Structures by name or by file, for every command that takes one (``sake-md run``, ``compile``, engines)."""

from pathlib import Path

from ase import Atoms

from .errors import InputError

__all__ = ["DEFAULT_MOLECULE", "MOLECULE_ALIASES", "SHIPPED_MOLECULES", "load_structure"]

DEFAULT_MOLECULE = "CH3CH2OH"
# Common names of ase.build.molecule's formulas (its names are those of ase.collections.g2 and a few more)
MOLECULE_ALIASES = {"ethanol": "CH3CH2OH", "methanol": "CH3OH", "benzene": "C6H6", "water": "H2O"}
# rMD17 molecules that ase.build.molecule lacks: sake_md/molecules/NAME.xyz, relaxed with the study's potential of
# each (md_runs/structures/make_molecules.py); malonaldehyde is propanedial, the form rMD17 samples
SHIPPED_MOLECULES = ("malonaldehyde", "aspirin")


def load_structure(spec: str | Path | None) -> Atoms:
    """A file anything ASE reads (its last frame), a name of ``SHIPPED_MOLECULES``, a molecule name of
    ``ase.build.molecule`` or an alias of ``MOLECULE_ALIASES``; None: ``DEFAULT_MOLECULE``."""
    import ase.build
    import ase.io

    if spec is None:
        return ase.build.molecule(DEFAULT_MOLECULE)
    if Path(spec).exists():
        try:
            return ase.io.read(spec)
        except Exception as e:  # ASE raises many kinds for unreadable files
            raise InputError(f"cannot read structure {spec} with ASE: {type(e).__name__}: {e}") from e
    if spec in SHIPPED_MOLECULES:
        atoms = ase.io.read(Path(__file__).with_name("molecules") / f"{spec}.xyz")
        atoms.info.pop("comment", None)  # how it was made: not to be copied into every frame of a trajectory
        return atoms
    try:
        return ase.build.molecule(MOLECULE_ALIASES.get(str(spec), str(spec)))
    except KeyError:  # ase.build.molecule's way of saying "no such name"
        raise InputError(f"structure {str(spec)!r} is neither a file nor a molecule name: "
                         f"{', '.join((*MOLECULE_ALIASES, *SHIPPED_MOLECULES))} or a name of ase.build.molecule "
                         "(e.g. CH3CH2OH, H2O, C6H6: the names of ase.collections.g2 and a few extra)") from None
