"""SAKECalculator: results equal the model's, batched predict equals single calls, bad input is refused."""

import ase.build
import numpy as np
import pytest
import torch
from ase import Atoms

from sake_md import SAKECalculator, save_checkpoint
from sake_md.batch import collate
from sake_md.errors import InputError

from .test_model import perturbed_potential


@pytest.fixture(scope="module")
def potential():
    return perturbed_potential("sake")


@pytest.fixture
def ethanol():
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def test_calculator_equals_model(potential, ethanol):
    ethanol.calc = SAKECalculator(potential, dtype="float64")
    b = collate([ethanol.numbers], [ethanol.positions], potential.species_index, torch.float64)
    out = potential.predict(b.species, b.positions, b.mask)
    assert ethanol.get_potential_energy() == pytest.approx(out["energy"].item(), abs=1e-12)
    assert ethanol.get_potential_energy(force_consistent=True) == pytest.approx(out["energy"].item(), abs=1e-12)
    np.testing.assert_allclose(ethanol.get_forces(), out["forces"][0].detach().numpy(), atol=1e-12)
    energies = ethanol.get_potential_energies()
    assert energies.shape == (9,)
    assert energies.sum() == pytest.approx(ethanol.get_potential_energy(), abs=1e-10)


def test_checkpoint_path_and_dtype(potential, ethanol, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", potential)
    calc64 = SAKECalculator(str(path))
    assert calc64.dtype == torch.float64  # the checkpoint's dtype
    calc32 = SAKECalculator(path, dtype="float32")
    e64 = calc64.get_potential_energy(ethanol.copy())
    e32 = calc32.get_potential_energy(ethanol.copy())
    assert abs(e32 - e64) < 1e-4
    with pytest.raises(ValueError, match="dtype"):
        SAKECalculator(path, dtype="float16")


def test_unknown_keyword_refused_with_the_valid_ones(potential):
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) dtpye; valid: model, device, dtype, .*label") as error:
        SAKECalculator(potential, dtpye="float64")
    assert "directory" in str(error.value)
    calc = SAKECalculator(potential, dtype="float64", label="ethanol")  # ASE's own keywords still pass
    assert calc.label == "ethanol" and calc.dtype == torch.float64 and calc.parameters == {}


def test_predict_many_equals_one_by_one(potential):
    mols = [ase.build.molecule(n) for n in ("CH3CH2OH", "H2O", "CH3CONH2", "HCN", "CH3CH2OH")]
    for k, m in enumerate(mols):
        m.rattle(0.03, seed=k)
    calc = SAKECalculator(potential, dtype="float64")
    many = calc.predict(mols, batch_size=2)
    for m, res in zip(mols, many, strict=True):
        m.calc = calc
        assert res["energy"] == pytest.approx(m.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(res["forces"], m.get_forces(), atol=1e-10)


def test_cuda_request_without_gpu(potential):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA"):
        SAKECalculator(potential, device="cuda")
    assert SAKECalculator(potential, device="auto").device.type == "cpu"


@pytest.mark.parametrize(
    "atoms, message",
    [
        (Atoms("CH3Cl", positions=np.random.default_rng(0).normal(size=(5, 3))), r"Cl \(Z=17\).*knows H, C, N, O"),
        (Atoms(), "no atoms"),
        (Atoms("H2O", positions=[[0, 0, 0], [0, 0, np.nan], [1, 0, 0]]), r"non-finite positions at atom\(s\) \[1\]"),
        (Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1], [1, 0, 0]], cell=[10, 10, 10], pbc=True),
         "periodic.*neighbour-list mode"),
    ],
    ids=["unknown-element", "empty", "nan", "periodic"],
)
def test_bad_input_is_refused(potential, atoms, message):
    atoms.calc = SAKECalculator(potential)
    with pytest.raises(InputError, match=message):
        atoms.get_potential_energy()


def test_cell_without_pbc_is_a_molecule(potential, ethanol):
    calc = SAKECalculator(potential, dtype="float64")
    e0 = calc.get_potential_energy(ethanol.copy())
    boxed = ethanol.copy()
    boxed.cell = [20, 20, 20]
    assert calc.get_potential_energy(boxed) == pytest.approx(e0, abs=1e-12)
