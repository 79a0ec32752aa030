"""Packaging: the shipped potentials reach wheels and checkouts alike, the version has one source.

The wheel itself is built, installed into a fresh venv and run by .ci/run."""

import importlib
import importlib.metadata
from pathlib import Path

import pytest

import sake_md
import sake_md.shipped as shipped
from sake_md.checkpoint import load_checkpoint
from sake_md.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed(pyproject):
    """The packages are listed by hand (the mapped data package rules out packages.find): a new
    subpackage missing from the list would be missing from the wheel. The data packages have no __init__.py."""
    from setuptools import find_packages

    listed = set(pyproject["tool"]["setuptools"]["packages"])
    assert listed == set(find_packages(str(ROOT), include=["sake_md*"])) | {"sake_md.molecules", "sake_md.potentials"}


def test_potentials_folder_is_the_package_data(pyproject):
    setuptools = pyproject["tool"]["setuptools"]
    folder = ROOT / setuptools["package-dir"]["sake_md.potentials"]
    assert folder == ROOT / "potentials"
    patterns = setuptools["package-data"]["sake_md.potentials"]
    names = {p.name for pattern in patterns for p in folder.glob(pattern)}
    assert shipped.DEFAULT_POTENTIAL in names and not any(n.endswith(".png") for n in names)  # the wheel stays small


def test_default_potential_found_in_the_checkout():
    path = shipped.shipped_potential()
    assert path == ROOT / "potentials" / shipped.DEFAULT_POTENTIAL
    assert load_checkpoint(path).atomic_numbers == [1, 6, 8]


def test_installed_package_data_comes_first(tmp_path, monkeypatch):
    """What a wheel holds: sake_md/potentials/NAME inside the installed package."""
    (tmp_path / "potentials").mkdir()
    installed = tmp_path / "potentials" / shipped.DEFAULT_POTENTIAL
    installed.write_bytes(b"")
    monkeypatch.setattr(shipped, "files", lambda package: tmp_path)
    assert shipped.shipped_potential() == installed


def test_missing_potential_names_where_it_looked():
    with pytest.raises(CheckpointError, match=r"shipped potential absent\.pt was not found .*--potential"):
        shipped.shipped_potential("absent.pt")


def test_version_comes_from_pyproject_through_the_metadata(pyproject, monkeypatch):
    try:
        installed = importlib.metadata.version("sake-md")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sake-md is not installed")
    assert sake_md.__version__ == installed == pyproject["project"]["version"]

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(sake_md.version).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(sake_md.version)
