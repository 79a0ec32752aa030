"""The one batched prediction over a dataset and the one error aggregator; the one reader for MD references."""

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sake_md.calculator import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.cli import main
from sake_md.data import read_dataset
from sake_md.errors import DataError, InputError
from sake_md.md.reference import read_reference
from sake_md.predict import ErrorSums, frame_terms, predict, predict_batches

from .physics import small_potential
from .test_data import emt_frames, write_npz


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "mixed.extxyz"
    ase.io.write(path, emt_frames(5, seed=1) + emt_frames(3, seed=2, molecule="CH3OH"), format="extxyz")
    return read_dataset(path)


def test_predict_equals_the_calculator_frame_by_frame(mixed):
    potential = small_potential(0, 1.0).to(torch.float64)
    energy, forces = predict(potential, mixed, batch_size=3)
    single = SAKECalculator(potential).predict(mixed.to_atoms(), batch_size=1)
    np.testing.assert_allclose(energy, [o["energy"] for o in single], rtol=0, atol=1e-10)
    for f, o in zip(forces, single, strict=True):
        np.testing.assert_allclose(f, o["forces"], rtol=0, atol=1e-10)
    energy_only, none = predict(potential, mixed, batch_size=8, forces=False)
    assert none is None and np.allclose(energy_only, energy, rtol=0, atol=1e-10)


def test_batched_sums_equal_the_whole_set(mixed):
    """Aggregating padded batches gives the same errors as per-frame arrays, and as numpy directly."""
    potential = small_potential(0, 1.0).to(torch.float64)
    batched = ErrorSums()
    for lb, out in predict_batches(potential, mixed, batch_size=3):
        batched.add_batch(out["energy"] - lb.energy, (out["forces"] - lb.forces) * lb.batch.mask[..., None],
                          lb.batch.mask)
    energy, forces = predict(potential, mixed)
    whole = ErrorSums()
    whole.add(energy - mixed.energy, [f - r for f, r in zip(forces, mixed.forces, strict=True)], mixed.n_atoms)
    df = np.concatenate([(f - r).ravel() for f, r in zip(forces, mixed.forces, strict=True)])
    de = energy - mixed.energy
    a, b = batched.summary(), whole.summary()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-12)
    assert b["force_rmse_meV_A"] == pytest.approx(1e3 * np.sqrt((df ** 2).mean()), rel=1e-12)
    assert b["energy_mae_meV_per_atom"] == pytest.approx(1e3 * np.mean(np.abs(de) / mixed.n_atoms), rel=1e-12)
    assert frame_terms(de, forces, mixed.n_atoms)["n_f"].sum() == 3 * mixed.n_atoms.sum()


def test_predict_refuses_unknown_elements(mixed):
    with pytest.raises(InputError, match="O \\(Z=8\\)"):
        predict(small_potential(0, 1.0, numbers=(1, 6)), mixed)


def test_reference_reads_every_dataset_format_in_ev(tmp_path):
    frames = emt_frames(4, seed=3)
    ase.io.write(tmp_path / "r.extxyz", frames, format="extxyz")
    write_npz(tmp_path / "r.npz", frames, style="sgdml")
    xyz, npz = read_reference(tmp_path / "r.extxyz"), read_reference(tmp_path / "r.npz")
    np.testing.assert_allclose(npz.positions, xyz.positions, atol=1e-7)  # extxyz text holds 8 digits
    np.testing.assert_allclose(npz.forces, xyz.forces, atol=1e-7)  # kcal/mol converted once
    ase.io.write(tmp_path / "two.extxyz", frames[:2] + emt_frames(1, molecule="CH3OH"), format="extxyz")
    with pytest.raises(DataError, match="more than one molecule"):
        read_reference(tmp_path / "two.extxyz")
    unlabelled = tmp_path / "positions.xyz"
    ase.io.write(unlabelled, [ase.build.molecule("CH3CH2OH")] * 2, format="xyz")
    assert read_reference(unlabelled).forces is None


def test_compare_takes_extxyz_reference_and_test_set(tmp_path):
    frames = emt_frames(6, seed=4)
    ase.io.write(tmp_path / "ref.extxyz", frames, format="extxyz")
    ase.io.write(tmp_path / "test.extxyz", emt_frames(3, seed=5), format="extxyz")
    ckpt = save_checkpoint(tmp_path / "a.pt", small_potential(0, 1.0))
    result = CliRunner().invoke(main, ["compare", str(ckpt), "--reference", str(tmp_path / "ref.extxyz"), "--test",
                                       str(tmp_path / "test.extxyz"), "--runs", "1", "--time", "2fs",
                                       "--no-progress", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "F MAE" in result.output and result.output.splitlines()[2].split()[-3] != "-"
