"""The sparse (neighbour-list) mode: equal to the dense model when r_c exceeds the molecule, smooth at
r_c, forces and stress equal finite differences, invariant under lattice translations and wrapping,
neighbour lists equal brute force, clear errors, and a small end-to-end run on EMT copper."""

import itertools

import ase.build
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from sake_md import SAKECalculator, save_checkpoint
from sake_md.batch import collate
from sake_md.errors import ConfigError, DataError, InputError
from sake_md.geometry import DIST_EPS
from sake_md.model import ModelConfig, SAKEPotential
from sake_md.neighbours import VerletNeighbours, neighbour_pairs, neighbour_table, search_cell
from sake_md.spatial import SPATIAL_BLOCKS

VARIANTS = list(SPATIAL_BLOCKS)
TINY = dict(hidden=8, heads=2, layers=2, radial=8)
OPTIONS = {"sake-sh": {"lmax": 2}, "sake-dot": {"channels": 4, "n_basis": 3}}


def tiny_potential(variant="sake", numbers=(1, 6, 8, 29), cutoff=None, seed=0) -> SAKEPotential:
    """float64, hidden 8, 2 layers, non-zero biases (no term trivially zero)."""
    torch.manual_seed(seed)
    config = ModelConfig(variant=variant, options=OPTIONS.get(variant, {}), cutoff=cutoff, **TINY)
    p = SAKEPotential(list(numbers), config, energy_scale=1.3, energy_shift=-2.0).double()
    with torch.no_grad():
        for name, t in p.named_parameters():
            if name.endswith("bias"):
                t.normal_(0, 0.1)
    return p


def predict(potential, atoms_list, stress=False, neighbours=None):
    """Energies (B,), forces (B, N, 3) and stress (B, 3, 3) as numpy, float64."""
    b = collate([a.numbers for a in atoms_list], [a.positions for a in atoms_list], potential.species_index,
                torch.float64, cells=[a.cell.array for a in atoms_list], pbc=[a.pbc for a in atoms_list])
    out = potential.predict(b.species, b.positions, b.mask, cell=b.cell, pbc=b.pbc, stress=stress,
                            neighbours=neighbours)
    return (out["energy"].numpy(), out["forces"].detach().numpy(),
            out["stress"].detach().numpy() if stress else None)


def copper(repeat=(1, 1, 1), rattle=0.1, seed=0, skew=True) -> Atoms:
    """Rattled fcc Cu (with one O), optionally in a skewed (triclinic) cell; a = 3.6 Å < 2 r_c."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.numbers[0] = 8
    if skew:
        atoms.set_cell(atoms.cell.array @ np.array([[1, 0.06, 0], [0, 1, 0.03], [0.02, 0, 1]]), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


# --- the same model -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_equals_dense_when_the_cutoff_exceeds_the_molecule(variant):
    """Every pair within r_c − width: the envelope is exactly 1, the neighbour-weighted softmax and the
    smooth count reduce to the dense softmax and 1/N; a padded batch of two molecules, far from the origin."""
    dense = tiny_potential(variant)
    sparse = dense.with_cutoff(8.0)
    mols = [ase.build.molecule("CH3CH2OH"), ase.build.molecule("H2O")]
    for k, m in enumerate(mols):
        m.rattle(0.05, seed=k)
    mols[1].positions += 1000.0
    E0, F0, _ = predict(dense, mols)
    E1, F1, _ = predict(sparse, mols)
    np.testing.assert_allclose(E1, E0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(F1, F0, rtol=0, atol=1e-10)
    assert dense.cutoff is None and sparse.cutoff == 8.0  # a copy: the dense model is unchanged


def test_dense_checkpoint_evaluated_sparse(tmp_path):
    """A dense-trained checkpoint, evaluated through the calculator with a cutoff beyond the molecule."""
    path = save_checkpoint(tmp_path / "dense.pt", tiny_potential("sake", numbers=(1, 6, 8)))
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    dense, sparse = SAKECalculator(path), SAKECalculator(path, cutoff=10.0)
    assert "stress" in sparse.implemented_properties and "stress" not in dense.implemented_properties
    e0, f0 = dense.get_potential_energy(atoms), dense.get_forces(atoms)
    assert sparse.get_potential_energy(atoms) == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(sparse.get_forces(atoms), f0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pairs_beyond_the_cutoff_change_nothing(variant):
    """A table built with a 1 Å skin (pairs with envelope 0) gives the numbers of the exact table."""
    p = tiny_potential(variant, cutoff=4.0)
    atoms = copper()
    skin = neighbour_table([neighbour_pairs(atoms.positions, 5.0, atoms.cell.array, atoms.pbc)], len(atoms))
    E0, F0, S0 = predict(p, [atoms], stress=True)
    E1, F1, S1 = predict(p, [atoms], stress=True, neighbours=skin)
    assert skin.valid.sum(-1).max() > predict_slots(atoms, 4.0)
    np.testing.assert_allclose(E1, E0, rtol=0, atol=1e-11)
    np.testing.assert_allclose(F1, F0, rtol=0, atol=1e-11)
    np.testing.assert_allclose(S1, S0, rtol=0, atol=1e-11)


def predict_slots(atoms, cutoff) -> int:
    return int(np.bincount(neighbour_pairs(atoms.positions, cutoff, atoms.cell.array, atoms.pbc).i).max())


# --- smoothness and derivatives ------------------------------------------------------------------

def crossing(kind: str, x: float) -> Atoms:
    """An atom at distance x from atom 0: a lone dimer (its only neighbour), or an O beside a water
    molecule (it keeps the nearer H as a neighbour while the O-O pair crosses)."""
    if kind == "dimer":
        return Atoms("OH", positions=[[0, 0, 0], [x, 0, 0]])
    return Atoms("OHHO", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [x, 0, 0]])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["dimer", "water+O"])
def test_energy_and_forces_are_continuous_at_the_cutoff(variant, kind):
    """Across the list's edge |r| = r_c and the envelope's zero d = r_c (|r| = √(r_c² − 1e-5), since d is
    the regularised distance), where a pair's weight first becomes non-zero."""
    p = tiny_potential(variant, cutoff=4.0)
    rc, delta = 4.0, 1e-8
    for edge in (rc, np.sqrt(rc**2 - DIST_EPS)):
        (E_in, E_out), (F_in, F_out) = zip(*[predict(p, [crossing(kind, edge + s)])[:2] for s in (-delta, delta)],
                                           strict=True)
        # the atom still feels its other neighbours: take off the change its force predicts (trapezoid
        # rule); what is left would be a jump
        smooth = -2 * delta * 0.5 * (F_in[0, -1, 0] + F_out[0, -1, 0])
        assert abs(E_out[0] - E_in[0] - smooth) < 1e-12
        np.testing.assert_allclose(F_in, F_out, rtol=0, atol=1e-8)
    # the pair matters inside: the test could see a jump
    assert abs(predict(p, [crossing(kind, rc - 0.5)])[0][0] - E_out[0]) > 1e-4
    # beyond r_c of every atom it is alone: E = E(rest) + E(lone atom)
    far = crossing(kind, rc + 1.2)
    parts = predict(p, [far[:-1]])[0][0] + predict(p, [far[-1:]])[0][0] - p.energy_shift  # one shift per structure
    assert predict(p, [far])[0][0] == pytest.approx(parts, abs=1e-10)


def finite_difference_forces(p, atoms, indices, h=1e-5):
    fd = np.zeros((len(indices), 3))
    for n, i in enumerate(indices):
        for k in range(3):
            e = []
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, k] += sign * h
                e.append(predict(p, [a])[0][0])
            fd[n, k] = -(e[0] - e[1]) / (2 * h)
    return fd


def strain_derivative(energy, atoms, h=1e-5) -> np.ndarray:
    """(1/V) ∂E/∂ε by central differences of symmetric strains of cell and positions."""
    out = np.zeros((3, 3))
    for i, j in itertools.product(range(3), repeat=2):
        e = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += sign * h / 2
            eps[j, i] += sign * h / 2
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            e.append(energy(a))
        out[i, j] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_forces_and_stress_equal_finite_differences(variant):
    """A skewed cell shorter than 2 r_c (an atom sees its own images)."""
    p = tiny_potential(variant, cutoff=4.0)
    atoms = copper()
    _, F, S = predict(p, [atoms], stress=True)
    np.testing.assert_allclose(F[0, [0, 3]], finite_difference_forces(p, atoms, [0, 3]), rtol=0, atol=1e-9)
    fd = strain_derivative(lambda a: predict(p, [a])[0][0], atoms)
    assert np.abs(fd).max() > 1e-6  # eV/Å³; the differences are ~1e-11
    np.testing.assert_allclose(S[0], fd, rtol=0, atol=1e-9)
    np.testing.assert_allclose(S[0], S[0].T, rtol=0, atol=1e-12)


def test_strain_derivative_has_ases_sign():
    """The finite-difference helper gives ASE's own stress for EMT: the tests above use ASE's convention."""
    from ase.calculators.emt import EMT

    atoms = copper(skew=True)
    atoms.numbers[:] = 29
    atoms.calc = EMT()
    fd = strain_derivative(lambda a: EMT().get_potential_energy(a), atoms)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), fd, atol=1e-6)


def test_invariant_under_lattice_translations_wrapping_and_rotation():
    p = tiny_potential("sake", cutoff=4.0)
    atoms = copper((2, 1, 1))
    E0, F0, S0 = predict(p, [atoms], stress=True)
    rng = np.random.default_rng(0)
    moved = atoms.copy()
    moved.positions += rng.normal(size=3) * 5  # a global translation
    jumped = atoms.copy()
    jumped.positions += rng.integers(-3, 4, size=(len(atoms), 3)) @ atoms.cell.array  # each atom by a lattice vector
    wrapped = jumped.copy()
    wrapped.wrap()
    other_cell = atoms.copy()  # the same lattice spanned by (a, a + b, c - 2a)
    other_cell.set_cell(np.array([[1, 0, 0], [1, 1, 0], [-2, 0, 1]]) @ atoms.cell.array, scale_atoms=False)
    for a in (moved, jumped, wrapped, other_cell):
        E, F, S = predict(p, [a], stress=True)
        np.testing.assert_allclose(E, E0, rtol=0, atol=1e-10)
        np.testing.assert_allclose(F, F0, rtol=0, atol=1e-10)
        np.testing.assert_allclose(S, S0, rtol=0, atol=1e-10)
    from scipy.spatial.transform import Rotation

    Q = Rotation.random(random_state=1).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ Q.T, scale_atoms=False)
    rotated.positions = atoms.positions @ Q.T
    E, F, S = predict(p, [rotated], stress=True)
    np.testing.assert_allclose(E, E0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(F[0], F0[0] @ Q.T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(S[0], Q @ S0[0] @ Q.T, rtol=0, atol=1e-10)


# --- neighbour lists -------------------------------------------------------------------------------

def brute_force(positions, cell, pbc, cutoff) -> set:
    """Every (i, j, shift) with |x_j − x_i + S·cell| < r_c, trying all images that can be that close."""
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # distances between lattice planes
    frac = positions @ np.linalg.inv(cell)
    spread = np.ceil(np.ptp(frac, axis=0))  # atoms may lie outside the cell
    reach = [int(np.ceil(cutoff / spacing[k]) + spread[k]) if pbc[k] else 0 for k in range(3)]
    pairs = set()
    for S in itertools.product(*(range(-m, m + 1) for m in reach)):
        shift = np.array(S) @ cell
        d = np.linalg.norm(positions[None, :] - positions[:, None] + shift, axis=-1)
        for i, j in zip(*np.nonzero(d < cutoff), strict=True):
            if i != j or any(S):
                pairs.add((int(i), int(j), *np.round(shift, 6)))
    return pairs


def pair_set(pairs) -> set:
    return {(int(i), int(j), *np.round(s, 6)) for i, j, s in zip(pairs.i, pairs.j, pairs.shifts, strict=True)}


@pytest.mark.parametrize("case", range(8))
def test_neighbour_list_equals_brute_force(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(2, 12))
    lengths = rng.uniform(2.0, 7.0, size=3)  # often shorter than 2 r_c, sometimes than r_c
    cell = np.diag(lengths) + rng.uniform(-0.8, 0.8, size=(3, 3)) * (1 - np.eye(3))
    pbc = [np.ones(3, bool), np.ones(3, bool), np.ones(3, bool), np.array([1, 1, 0], bool),
           np.array([0, 1, 0], bool), np.zeros(3, bool), np.ones(3, bool), np.array([1, 0, 1], bool)][case]
    positions = rng.uniform(-0.5, 1.5, size=(n, 3)) @ cell  # some outside the cell
    positions = positions[np.min(np.linalg.norm(positions[:, None] - positions[None], axis=-1)
                                 + 9 * np.eye(n), axis=1) > 0.3]
    cutoff = float(rng.uniform(2.5, 5.0))
    expected = brute_force(positions, cell, pbc, cutoff)
    assert pair_set(neighbour_pairs(positions, cutoff, cell, pbc)) == expected
    assert len(expected) > 0


def test_neighbour_list_of_a_molecule_far_from_the_origin():
    """A tight box around the atoms wherever they are (the search never spans the way to the origin)."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.positions += [1000.0, -1000.0, 1000.0]
    pairs = neighbour_pairs(atoms.positions, 2.0)
    assert pair_set(pairs) == brute_force(atoms.positions, np.eye(3), np.zeros(3, bool), 2.0)
    box, origin = search_cell(atoms.positions, None, np.zeros(3, bool))
    extent = np.ptp(atoms.positions, axis=0)
    np.testing.assert_allclose(np.abs(box).sum(0), extent + 1.0, atol=1e-9)
    assert np.all(origin <= atoms.positions.min(0)) and np.all(origin + np.abs(box).sum(0) >= atoms.positions.max(0))


def test_verlet_list_reuses_within_half_the_skin_and_rebuilds_after():
    p = tiny_potential("sake", cutoff=4.0)
    atoms = copper((2, 1, 1))
    verlet = VerletNeighbours(4.0, skin=0.6)

    def check(a):
        table = verlet.table(a.numbers, a.positions, a.cell.array, a.pbc)
        np.testing.assert_allclose(predict(p, [a], neighbours=table)[1], predict(p, [a])[1], rtol=0, atol=1e-12)

    check(atoms)
    moved = atoms.copy()
    moved.positions += np.random.default_rng(0).uniform(-0.15, 0.15, size=moved.positions.shape)
    check(moved)
    assert verlet.builds == 1
    moved.positions[3] += [0.32, 0, 0]
    check(moved)
    assert verlet.builds == 2
    strained = moved.copy()
    strained.set_cell(moved.cell.array * 1.001, scale_atoms=True)
    check(strained)
    assert verlet.builds == 3


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_refused_clearly(tmp_path):
    p = tiny_potential("sake", cutoff=4.0)
    calc = SAKECalculator(p)
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(InputError, match="zero volume"):
        calc.get_potential_energy(flat)
    stacked = Atoms("CuO", positions=[[1, 1, 1], [1, 1, 1.01]], cell=[4, 4, 4], pbc=True)
    with pytest.raises(InputError, match="atoms 0 and 1 are 0.01 Å apart, on top of each other"):
        calc.get_potential_energy(stacked)
    with pytest.raises(ConfigError, match="trained with a cutoff of 4 Å and supports only that one"):
        SAKECalculator(p, cutoff=6.0)
    with pytest.raises(ConfigError, match="at least the envelope width"):
        ModelConfig(cutoff=0.5)
    with pytest.raises(InputError, match="periodic.*dense.*--cutoff"):
        SAKECalculator(tiny_potential("sake")).get_potential_energy(copper())
    ase.io.write(tmp_path / "flat.extxyz", _labelled(flat))
    from sake_md.data import read_dataset

    with pytest.raises(DataError, match="frame 0 has a periodic cell of zero volume"):
        read_dataset(tmp_path / "flat.extxyz")


def _labelled(atoms):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((len(atoms), 3)))
    return atoms



# --- end to end: EMT copper ------------------------------------------------------------------------

def emt_copper_snapshots(path):
    """Langevin MD with EMT at 300 K and 900 K, four lattice constants each, 4 snapshots per run (32 atoms)."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin

    frames, rng = [], np.random.default_rng(0)
    for temperature in (300, 900):
        for a0 in (3.45, 3.55, 3.65, 3.75):
            atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat((2, 2, 2))
            atoms.rattle(0.05, seed=int(temperature + 100 * a0))
            atoms.calc = EMT()
            dyn = Langevin(atoms, 5 * units.fs, temperature_K=temperature, friction=0.05, fixcm=False, rng=rng)
            for _ in range(4):
                dyn.run(5)
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                                   forces=atoms.get_forces())
                frames.append(frame)
    ase.io.write(path, frames, format="extxyz")
    return frames


@pytest.fixture(scope="module")
def copper_model(tmp_path_factory):
    """``sake-md train --cutoff 4.0`` on periodic extxyz data (a lattice in every frame)."""
    from click.testing import CliRunner

    from sake_md.cli import main

    tmp = tmp_path_factory.mktemp("copper")
    emt_copper_snapshots(tmp / "cu.extxyz")
    args = ["train", "--recipe", "paper", "--data", str(tmp / "cu.extxyz"), "--out", str(tmp / "run"),
            "--cutoff", "4.0",
            "--hidden", "8", "--heads", "2", "--layers", "2", "--radial", "8", "--epochs", "15", "--valid", "8",
            "--batch-size", "4", "--lr", "1e-2", "--warmup-fraction", "0", "--decay-end", "1",
            "--energy-weight", "1", "--dtype", "float64", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return tmp / "run" / "best.pt"


def test_periodic_data_through_the_readers(tmp_path):
    from sake_md.data import read_dataset

    frames = [copper(seed=k) for k in range(3)]
    ase.io.write(tmp_path / "cu.extxyz", [_labelled(a) for a in frames], format="extxyz")
    with ase.db.connect(tmp_path / "cu.db") as db:
        for a in frames:
            db.write(_labelled(a))
    for name in ("cu.extxyz", "cu.db"):
        data = read_dataset(tmp_path / name)
        np.testing.assert_allclose(data.cells[2], frames[2].cell.array, atol=1e-9)
        assert data.pbc[0].all() and data.subset([1]).cells[0].shape == (3, 3)
        assert data.to_atoms()[1].pbc.all()
    assert read_dataset(tmp_path / name, length_unit="nm").cells[0][0, 0] == pytest.approx(36.0, rel=1e-3)


def test_trained_copper_relaxes_its_cell_and_runs_nvt_and_npt(copper_model):
    from ase import units
    from ase.filters import FrechetCellFilter
    from ase.md.langevin import Langevin
    from ase.md.nose_hoover_chain import MTKNPT
    from ase.optimize import BFGS

    from sake_md.checkpoint import describe_checkpoint

    assert describe_checkpoint(copper_model)["mode"].startswith("sparse: neighbours within 4 Å")
    calc = SAKECalculator(copper_model)
    assert calc.potential.cutoff == 4.0
    atoms = bulk("Cu", "fcc", a=3.70, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.03, seed=1)
    atoms.calc = calc
    e0, s0 = atoms.get_potential_energy(), np.abs(atoms.get_stress()).max()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert opt.run(fmax=0.005, steps=200)  # converged: forces and stress ~0
    a = np.cbrt(atoms.get_volume() / len(atoms) * 4)
    assert atoms.get_potential_energy() < e0 and np.abs(atoms.get_stress()).max() < 0.1 * s0
    assert 3.3 < a < 3.9, a  # EMT's is 3.59 Å; a few epochs of a tiny model get near it

    from sake_md.md.run import thermalize

    thermalize(atoms, 300.0, np.random.default_rng(0))
    builds = calc.neighbours.builds
    Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
             rng=np.random.default_rng(1)).run(20)
    assert calc.neighbours.builds - builds < 5  # the list is reused between steps (skin)
    assert 50 < atoms.get_temperature() < 1000
    v0 = atoms.get_volume()
    MTKNPT(atoms, 2 * units.fs, temperature_K=300, pressure_au=1.0 * units.GPa, tdamp=100 * units.fs,
           pdamp=500 * units.fs).run(20)
    assert atoms.get_volume() < 0.995 * v0  # 1 GPa squeezes the relaxed box: the barostat sees the stress
    assert np.isfinite(atoms.get_potential_energy()) and 50 < atoms.get_temperature() < 1000


def test_run_command_takes_a_periodic_structure_file(copper_model, tmp_path):
    from click.testing import CliRunner

    from sake_md.cli import main

    structure = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    ase.io.write(tmp_path / "cu.cif", structure)
    result = CliRunner().invoke(main, ["run", "--potential", str(copper_model), "--structure", str(tmp_path / "cu.cif"),
                                       "--steps", "10", "--traj", str(tmp_path / "md.extxyz"), "--log", "",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "periodic structure: bonds were not checked" in result.output
    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    assert frames[-1].pbc.all() and np.allclose(frames[-1].cell.array, structure.cell.array)
    dense = save_checkpoint(tmp_path / "dense.pt", tiny_potential("sake"))
    result = CliRunner().invoke(main, ["run", "--potential", str(dense), "--structure", str(tmp_path / "cu.cif"),
                                       "--steps", "1", "--traj", "", "--log", "", "--no-progress"])
    assert result.exit_code == 1 and "periodic" in result.output and "--cutoff" in result.output


def test_sparse_calculators_keep_freed_memory(monkeypatch):
    """A sparse model switches glibc to keeping freed memory (linear cost at large N); a dense one does not."""
    import sys

    from sake_md import allocator, calculator

    calls = []
    monkeypatch.setattr(calculator, "keep_freed_memory", lambda: calls.append(1) or True)
    potential = SAKEPotential([1, 8], ModelConfig(hidden=8, heads=2, layers=2, radial=8))
    SAKECalculator(potential)
    assert calls == []
    SAKECalculator(potential, cutoff=4.0)
    assert calls == [1]
    if sys.platform.startswith("linux"):
        assert allocator.keep_freed_memory() and allocator.keep_freed_memory()  # applied once, idempotent
