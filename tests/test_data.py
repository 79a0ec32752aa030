"""Readers (npz, extxyz, ASE db) on fixtures generated from ASE's EMT, units, splits, batches, bad data."""

import ase.build
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from sake_md.data import DataSource, batches, read_dataset, shuffled_order, split
from sake_md.errors import DataError
from sake_md.units import KCAL_PER_MOL

from .conftest import rmd17_file


def emt_frames(n=8, seed=0, molecule="CH3CH2OH"):
    """Rattled copies of a small molecule labelled by ASE's EMT (eV, eV/Å) in a SinglePointCalculator."""
    rng = np.random.default_rng(seed)
    base = ase.build.molecule(molecule)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def write_npz(path, frames, style="rmd17", **replace):
    """rMD17 (nuclear_charges/coords/energies/forces) or sGDML (z/R/E/F) arrays in kcal/mol and Å."""
    arrays = {
        "z": frames[0].numbers.astype(np.uint8),
        "R": np.array([a.positions for a in frames]),
        "E": np.array([a.get_potential_energy() for a in frames]) / KCAL_PER_MOL,
        "F": np.array([a.get_forces() for a in frames]) / KCAL_PER_MOL,
    }
    if style == "sgdml":
        arrays["E"] = arrays["E"][:, None]  # sGDML stores (M, 1)
    else:
        arrays = dict(zip(("nuclear_charges", "coords", "energies", "forces"), arrays.values(), strict=True))
    arrays.update(replace)
    np.savez(path, **arrays)
    return path


def write_extxyz_custom(path, frames, energy_key="dft_energy", forces_key="dft_forces"):
    plain = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info[energy_key] = atoms.get_potential_energy()
        copy.arrays[forces_key] = atoms.get_forces()
        plain.append(copy)
    ase.io.write(path, plain, format="extxyz")
    return path


def assert_same_labels(data, frames, atol=1e-9):
    """Equal to ``atol`` (text formats store 8 significant digits: use 1e-6 there)."""
    np.testing.assert_allclose(data.energy, [a.get_potential_energy() for a in frames], rtol=0, atol=atol)
    for m, atoms in enumerate(frames):
        np.testing.assert_array_equal(data.numbers[m], atoms.numbers)
        np.testing.assert_allclose(data.positions[m], atoms.positions, rtol=0, atol=atol)
        np.testing.assert_allclose(data.forces[m], atoms.get_forces(), rtol=0, atol=atol)


@pytest.mark.parametrize("style", ["rmd17", "sgdml"])
def test_npz_is_read_in_kcal_per_mol_and_converted_to_ev(tmp_path, style):
    frames = emt_frames()
    data = read_dataset(write_npz(tmp_path / "d.npz", frames, style))
    assert len(data) == len(frames) and data.species == [1, 6, 8]
    assert_same_labels(data, frames)


def test_npz_units_can_be_overridden(tmp_path):
    frames = emt_frames(3)
    path = tmp_path / "ev.npz"
    write_npz(path, frames, E=np.array([a.get_potential_energy() for a in frames]),
              F=np.array([a.get_forces() for a in frames]), style="sgdml")
    assert_same_labels(read_dataset(path, energy_unit="eV"), frames)
    data = read_dataset(path, energy_unit="eV", length_unit="nm")
    np.testing.assert_allclose(data.positions[0], 10 * frames[0].positions)
    np.testing.assert_allclose(data.forces[0], frames[0].get_forces() / 10)


def test_extxyz_with_custom_keys_and_with_single_point_calculator(tmp_path):
    frames = emt_frames(4)
    custom = write_extxyz_custom(tmp_path / "custom.extxyz", frames)
    assert_same_labels(read_dataset(custom, energy_key="dft_energy", forces_key="dft_forces"), frames, 1e-6)
    spc = tmp_path / "spc.xyz"
    ase.io.write(spc, frames, format="extxyz")  # ASE stores the calculator's energy/forces
    assert_same_labels(read_dataset(spc), frames, 1e-6)
    kcal = read_dataset(custom, energy_key="dft_energy", forces_key="dft_forces", energy_unit="kcal/mol")
    np.testing.assert_allclose(kcal.energy, [a.get_potential_energy() * KCAL_PER_MOL for a in frames], rtol=1e-7)
    source = DataSource(str(custom), "dft_energy", "dft_forces", energy_unit="kcal/mol")  # the options as one value
    np.testing.assert_array_equal(source.read().energy, kcal.energy)


def test_ase_database_with_calculator_and_with_key_value_pairs(tmp_path):
    frames = emt_frames(4)
    path = tmp_path / "frames.db"
    with ase.db.connect(path) as db:
        for atoms in frames:
            db.write(atoms)
    assert_same_labels(read_dataset(path), frames)
    custom = tmp_path / "custom.db"
    with ase.db.connect(custom) as db:
        for atoms in frames:
            db.write(atoms.copy(), key_value_pairs={"e_dft": atoms.get_potential_energy()},
                     data={"f_dft": atoms.get_forces()})
    assert_same_labels(read_dataset(custom, energy_key="e_dft", forces_key="f_dft"), frames)


def test_mixed_sizes_are_padded_with_zero_forces(tmp_path):
    frames = emt_frames(2) + emt_frames(2, molecule="CH4")
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path)
    index = torch.full((119,), -1, dtype=torch.long)
    index[torch.tensor(data.species)] = torch.arange(len(data.species))
    (lb,) = list(batches(data, 4, index, torch.float64))
    assert lb.batch.positions.shape == (4, 9, 3)
    assert lb.batch.mask.sum(-1).tolist() == [9, 9, 5, 5]
    assert torch.all(lb.forces[2:, 5:] == 0)
    np.testing.assert_allclose(lb.forces[3, :5].numpy(), frames[3].get_forces())
    np.testing.assert_allclose(lb.energy.numpy(), data.energy)
    assert lb.energy.dtype == torch.float64


def test_split_is_seeded_and_disjoint(tmp_path):
    data = read_dataset(write_npz(tmp_path / "d.npz", emt_frames(10)))
    train, valid = split(data, 3, seed=1)
    again, _ = split(data, 3, seed=1)
    other, _ = split(data, 3, seed=2)
    assert len(train) == 7 and len(valid) == 3
    np.testing.assert_array_equal(train.energy, again.energy)
    assert not np.array_equal(train.energy, other.energy)
    assert not set(train.energy) & set(valid.energy)
    np.testing.assert_array_equal(shuffled_order(10, 0, 3), shuffled_order(10, 0, 3))
    with pytest.raises(DataError, match="cannot hold out 10 of 10"):
        split(data, 10)
    # pool: validation from the first 6 frames only, the same as the 6-frame file's; frames 6-9 always train
    base = data.subset(range(6))
    train, valid = split(data, 3, seed=1, pool=6)
    np.testing.assert_array_equal(valid.energy, split(base, 3, seed=1)[1].energy)
    assert set(data.energy[6:]) <= set(train.energy) and len(train) == 7
    with pytest.raises(DataError, match="cannot hold out 7 of 6"):
        split(data, 7, pool=6)
    with pytest.raises(DataError, match="the first 11 frames, but the file has 10"):
        split(data, 3, pool=11)


# ---- bad data --------------------------------------------------------------------------------------

def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_dataset(tmp_path / "nope.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        read_dataset(tmp_path / "x.csv")


def test_npz_missing_keys_lists_what_was_found(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, coords=np.zeros((2, 3, 3)), energy=np.zeros(2))
    with pytest.raises(DataError, match="found: coords, energy"):
        read_dataset(path)


@pytest.mark.parametrize("replace", [
    {"energies": np.zeros(5)},             # wrong number of frames
    {"forces": np.zeros((8, 8, 3))},       # wrong number of atoms
    {"nuclear_charges": np.ones(4)},       # fewer numbers than atoms
])
def test_npz_inconsistent_shapes(tmp_path, replace):
    with pytest.raises(DataError, match="inconsistent shapes"):
        read_dataset(write_npz(tmp_path / "bad.npz", emt_frames(8), **replace))


def test_non_finite_labels_name_the_frame(tmp_path):
    frames = emt_frames(6)
    energies = np.array([a.get_potential_energy() for a in frames]) / KCAL_PER_MOL
    energies[4] = np.nan
    with pytest.raises(DataError, match="frame 4 has a non-finite energy"):
        read_dataset(write_npz(tmp_path / "e.npz", frames, energies=energies))
    forces = np.array([a.get_forces() for a in frames])
    forces[2, 1, 0] = np.inf
    with pytest.raises(DataError, match="frame 2 has non-finite force"):
        read_dataset(write_npz(tmp_path / "f.npz", frames, forces=forces))


def test_extxyz_missing_label_lists_keys(tmp_path):
    path = write_extxyz_custom(tmp_path / "c.extxyz", emt_frames(2))
    with pytest.raises(DataError, match=r"frame 0 has no 'energy' label; found keys: .*dft_energy"):
        read_dataset(path)
    with pytest.raises(DataError, match=r"no 'forces' label; found keys: .*dft_forces"):
        read_dataset(path, energy_key="dft_energy")


def test_extxyz_inconsistent_force_shape(tmp_path):
    frames = emt_frames(2)
    path = write_extxyz_custom(tmp_path / "c.extxyz", frames)
    text = path.read_text().replace("dft_forces:R:3", "dft_forces:R:2")
    lines = [" ".join(line.split()[:-1]) if len(line.split()) == 7 else line for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="frame 0: inconsistent shapes"):
        read_dataset(path, energy_key="dft_energy", forces_key="dft_forces")


def test_real_rmd17_ethanol_is_read_in_ev():
    data = read_dataset(rmd17_file("ethanol_train_01"))
    assert len(data) == 1000 and data.species == [1, 6, 8] and data.n_atoms.tolist() == [9] * 1000
    raw = np.load(rmd17_file("ethanol_train_01"))
    np.testing.assert_allclose(data.energy, raw["energies"] * KCAL_PER_MOL)
    assert -4300 < data.energy.mean() < -4100  # ethanol total energy, eV
