"""Structures by name (sake_md.structures) and the shipped potential picked for one (sake_md.shipped)."""

from pathlib import Path

import numpy as np
import pytest

import sake_md.shipped as shipped
from sake_md.errors import InputError
from sake_md.md.bonds import find_bonds
from sake_md.structures import SHIPPED_MOLECULES, load_structure

ROOT = Path(__file__).resolve().parents[1]
BOND_RANGES = {"CH": (1.08, 1.14), "CC": (1.38, 1.54), "CO": (1.19, 1.40), "HO": (0.95, 1.00)}  # Å


@pytest.mark.parametrize("name, formula, bonds", [("malonaldehyde", "C3H4O2", 8), ("aspirin", "C9H8O4", 21)])
def test_shipped_molecules_load_with_sane_bonds(name, formula, bonds):
    atoms = load_structure(name)
    assert atoms.get_chemical_formula() == formula and not atoms.pbc.any()
    assert not atoms.info  # the file's comment is not copied into the frames of a trajectory
    symbols, d = atoms.get_chemical_symbols(), atoms.get_all_distances()
    assert d[np.triu_indices(len(atoms), 1)].min() > 0.9
    pairs = find_bonds(atoms)
    assert len(pairs) == bonds  # a tree, plus aspirin's ring
    for i, j in pairs:
        low, high = BOND_RANGES["".join(sorted(symbols[i] + symbols[j]))]
        assert low < d[i, j] < high, (name, symbols[i], symbols[j], d[i, j])
    hydrogens = [k for k, s in enumerate(symbols) if s == "H"]
    assert all((pairs == k).any(axis=1).sum() == 1 for k in hydrogens)  # every H bonded once


def test_shipped_molecules_are_package_data():
    """In wheels and sdists: the data package sake_md.molecules (pyproject.toml)."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "sake_md.molecules" in setuptools["packages"]
    patterns = setuptools["package-data"]["sake_md.molecules"]
    names = {p.name for pattern in patterns for p in (ROOT / "sake_md" / "molecules").glob(pattern)}
    assert names == {f"{name}.xyz" for name in SHIPPED_MOLECULES}


def test_unknown_name_lists_the_shipped_molecules():
    with pytest.raises(InputError, match="malonaldehyde, aspirin or a name of ase.build.molecule"):
        load_structure("no-such-molecule")


@pytest.fixture
def shipped_folder(tmp_path, monkeypatch):
    """A shipped folder of the default (ethanol) and a malonaldehyde potential, and an aspirin one in a subfolder
    (not shipped: only the top level is), as the installed package data."""
    folder = tmp_path / "potentials"
    (folder / "ablation").mkdir(parents=True)
    (folder / shipped.DEFAULT_POTENTIAL).symlink_to(ROOT / "potentials" / "sake_ethanol.pt")
    (folder / "sake_malonaldehyde.pt").symlink_to(ROOT / "potentials" / "ablation" / "sake_malonaldehyde.pt")
    (folder / "ablation" / "sake_aspirin.pt").symlink_to(ROOT / "potentials" / "ablation" / "sake_aspirin.pt")
    monkeypatch.setattr(shipped, "files", lambda package: tmp_path)
    return folder


def test_shipped_potentials_are_the_top_level_default_first(shipped_folder):
    assert shipped.shipped_potentials() == [shipped_folder / shipped.DEFAULT_POTENTIAL,
                                            shipped_folder / "sake_malonaldehyde.pt"]


def test_the_potential_trained_on_the_composition_is_picked_and_said(shipped_folder, capsys):
    atoms = load_structure("malonaldehyde")
    assert shipped.matching_potential(atoms) == shipped_folder / "sake_malonaldehyde.pt"
    assert shipped.potential_for(atoms) == shipped_folder / "sake_malonaldehyde.pt"
    assert capsys.readouterr().err == ("sake_md: no potential given: using the shipped sake_malonaldehyde.pt, "
                                       "trained on C3H4O2\n")


def test_the_default_is_picked_silently_for_its_molecule_with_a_warning_for_others(shipped_folder, capsys):
    assert shipped.potential_for(load_structure("ethanol")) == shipped_folder / shipped.DEFAULT_POTENTIAL
    assert capsys.readouterr().err == ""
    aspirin = load_structure("aspirin")  # its potential is in a subfolder: not shipped
    assert shipped.matching_potential(aspirin) is None
    assert shipped.potential_for(aspirin) == shipped_folder / shipped.DEFAULT_POTENTIAL
    assert capsys.readouterr().err == ("sake_md: warning: no shipped potential was trained on C9H8O4; using the "
                                       "default sake_ethanol.pt outside its training data (pass --potential CKPT)\n")


def test_checkout_ships_ethanol_malonaldehyde_and_aspirin():
    """Today's shipped folder: ethanol matches the default, malonaldehyde and aspirin their own; a molecule none was
    trained on matches nothing (the default runs it, with a warning)."""
    assert shipped.shipped_potentials() == [shipped.shipped_potential(), shipped.shipped_potential("sake_aspirin.pt"),
                                            shipped.shipped_potential("sake_malonaldehyde.pt")]
    assert shipped.matching_potential(load_structure("ethanol")) == shipped.shipped_potential()
    assert shipped.matching_potential(load_structure("malonaldehyde")) == shipped.shipped_potential(
        "sake_malonaldehyde.pt")
    assert shipped.matching_potential(load_structure("aspirin")) == shipped.shipped_potential("sake_aspirin.pt")
    assert shipped.matching_potential(load_structure("benzene")) is None


def test_run_uses_the_matching_potential(shipped_folder, capsys):
    from sake_md.md.run import MDSettings, run_from_files

    summary = run_from_files(structure="malonaldehyde", settings=MDSettings(steps=2), progress=False, compile=False)
    assert summary.steps == 2 and summary.stable
    assert "using the shipped sake_malonaldehyde.pt" in capsys.readouterr().err
