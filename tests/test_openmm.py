"""SAKE in OpenMM (sake_md.engines.openmm): Context energies and forces equal SAKECalculator's, NVE
conservation, ML/MM of ethanol in TIP3P water, and one clear error per kind of bad input."""

import warnings
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units

from sake_md import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.errors import CheckpointError, InputError
from sake_md.md.bonds import BondCriterion
from sake_md.spatial import SPATIAL_BLOCKS

from .test_model import perturbed_potential

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmml")
app, unit = pytest.importorskip("openmm.app"), pytest.importorskip("openmm.unit")
from openmmml import MLPotential  # noqa: E402

from sake_md.engines.openmm import openmm_topology, torch_force_copy_crashes, torch_force_unavailable  # noqa: E402

KJ = units.kJ / units.mol  # eV per kJ/mol
DATA = Path(__file__).parent / "data"
TOLERANCE = {"float64": 1e-8, "float32": 1e-5}


def context_results(system, positions_nm, box_nm=None, groups=-1):
    """Energy (kJ/mol) and forces (N, 3) kJ/mol/nm of ``system`` at ``positions_nm`` on the Reference platform."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    if box_nm is not None:
        context.setPeriodicBoxVectors(*box_nm)
    context.setPositions(positions_nm)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def reference_results(model, atoms, dtype, cutoff=None):
    """SAKECalculator's energy and forces in OpenMM's units."""
    atoms = atoms.copy()
    atoms.calc = SAKECalculator(model, dtype=dtype, cutoff=cutoff)
    return atoms.get_potential_energy() / KJ, atoms.get_forces() / KJ * units.nm


def assert_matches(ours, reference, dtype):
    (e, f), (e0, f0) = ours, reference
    rtol = TOLERANCE[dtype]
    assert abs(e - e0) <= rtol * abs(e0), (e, e0)
    assert np.abs(f - f0).max() <= rtol * np.abs(f0).max(), np.abs(f - f0).max()


def checkpoint(tmp_path, potential, name="model.pt"):
    return str(save_checkpoint(tmp_path / name, potential))


def ethanol(seed=3):
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def periodic_cluster(seed=0):
    """12 H/C/O atoms at least 1 Å apart in a skewed 6 Å cell, whose images interact at a 4 Å cutoff."""
    rng = np.random.default_rng(seed)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 6.0, 0.0], [0.5, -0.8, 6.2]])
    points = []
    while len(points) < 12:
        p = rng.uniform(0, 1, 3) @ cell
        trial = Atoms("H" * (len(points) + 1), positions=[*points, p], cell=cell, pbc=True)
        if len(points) == 0 or trial.get_distances(len(points), range(len(points)), mic=True).min() > 1.0:
            points.append(p)
    numbers = rng.choice([1, 6, 8], size=12)
    return Atoms(numbers=numbers, positions=np.array(points) + [7.0, -3.0, 13.0], cell=cell, pbc=True)


@pytest.mark.parametrize("variant", list(SPATIAL_BLOCKS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dense_context_equals_calculator(tmp_path, variant, dtype):
    model = checkpoint(tmp_path, perturbed_potential(variant))
    atoms = ethanol()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the PythonForce fallback's one warning
        system = MLPotential("sake", model=model).createSystem(openmm_topology(atoms), dtype=dtype)
    assert_matches(context_results(system, atoms.positions / 10), reference_results(model, atoms, dtype), dtype)


@pytest.mark.parametrize("variant", list(SPATIAL_BLOCKS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sparse_periodic_context_equals_calculator(tmp_path, variant, dtype):
    """A sparse model in a triclinic box, atoms outside the home cell: images, wrapping and shifts."""
    model = checkpoint(tmp_path, perturbed_potential(variant, cutoff=4.0))
    atoms = periodic_cluster()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        system = MLPotential("sake", model=model).createSystem(openmm_topology(atoms), dtype=dtype)
    box = [openmm.Vec3(*v) / 10 for v in atoms.cell.array]
    ours = context_results(system, atoms.positions / 10, box)
    assert_matches(ours, reference_results(model, atoms, dtype), dtype)
    moved = atoms.copy()  # a second geometry: the neighbour table is rebuilt, not baked into the trace
    moved.positions += np.random.default_rng(1).normal(0, 0.15, moved.positions.shape)
    assert_matches(context_results(system, moved.positions / 10, box), reference_results(model, moved, dtype), dtype)


def test_shipped_name_and_dense_model_evaluated_sparse():
    """``model="sake_ethanol"`` finds the shipped potential; ``cutoff`` (nm) evaluates it in sparse mode."""
    atoms = ethanol()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        system = MLPotential("sake", model="sake_ethanol").createSystem(openmm_topology(atoms), dtype="float64",
                                                                       cutoff=1.0 * unit.nanometer)
    from sake_md.shipped import shipped_potential

    reference = reference_results(shipped_potential(), atoms, "float64")  # dense: the same numbers
    assert_matches(context_results(system, atoms.positions / 10), reference, "float64")


def test_torch_force_equals_calculator(tmp_path):
    """openmm-torch's TorchForce, where it works with the installed torch (the reason is the skip message)."""
    reason = torch_force_unavailable()
    if reason:
        pytest.skip(reason)
    model = checkpoint(tmp_path, perturbed_potential("sake"))
    atoms = ethanol()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        system = MLPotential("sake", model=model).createSystem(openmm_topology(atoms), dtype="float64", force="torch")
    crash = torch_force_copy_crashes()  # openmm-torch 1.5 with OpenMM 8.6: said when the force is built
    assert [str(w.message) for w in caught if "cannot copy a TorchForce" in str(w.message)] == (
        [f"sake_md: {crash}; for those, pass force='python' (the same module through a PythonForce)"] if crash else [])
    assert any(f.getName() == "TorchForce" for f in system.getForces())  # plugin forces come back as Force
    assert_matches(context_results(system, atoms.positions / 10), reference_results(model, atoms, "float64"),
                   "float64")


@pytest.mark.parametrize("periodic", [False, True])
def test_saved_module_is_what_torch_force_runs(tmp_path, periodic):
    """What openmm-torch does with the module, done by hand: save it, load it (its C++ side calls
    torch::jit::load), call forward(positions[, box]) with positions requiring grad in the platform's
    precision, backward for the forces; also with every particle of a larger System (``indices``)."""
    from sake_md.engines.torchscript import export_energy_module
    from sake_md.inference import inference_potential

    model = checkpoint(tmp_path, perturbed_potential("sake", cutoff=4.0 if periodic else None))
    atoms = periodic_cluster() if periodic else ethanol()
    others = np.random.default_rng(0).uniform(-5, 5, (3, 3))  # MM particles the module must ignore
    path = tmp_path / "module.pt"
    module = export_energy_module(inference_potential(model), atoms.numbers, periodic, indices=range(3, 3 + len(atoms)))
    torch.jit.save(module, str(path))
    loaded = torch.jit.load(str(path))
    box = torch.tensor(atoms.cell.array / 10) if periodic else None
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(np.concatenate([others, atoms.positions]) / 10, dtype=dtype, requires_grad=True)
        energy = loaded(x, box.to(dtype)) if periodic else loaded(x)
        energy.backward()
        assert x.grad[:3].abs().max() == 0
        if dtype == torch.float64:
            ours = (float(energy), -x.grad[3:].numpy())
            assert_matches(ours, reference_results(model, atoms, "float64"), "float64")
    assert energy.dtype == torch.float64


def test_fallback_warns_once_and_python_force_is_silent(tmp_path):
    model = checkpoint(tmp_path, perturbed_potential("sake-no-spatial"))
    topology = openmm_topology(ethanol())
    potential = MLPotential("sake", model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        potential.createSystem(topology, force="python")
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
        potential.createSystem(topology)
    fallback = [w for w in caught if "through a PythonForce instead" in str(w.message)]
    assert len(fallback) == (1 if torch_force_unavailable() else 0)
    copying = [w for w in caught if "cannot copy a TorchForce" in str(w.message)]
    assert len(copying) == (0 if torch_force_unavailable() or not torch_force_copy_crashes() else 1)


@pytest.mark.slow
def test_nve_conserves_energy(tmp_path):
    """VerletIntegrator, 0.5 fs, float64, 2 ps: drift (linear fit of E_tot) under 0.1 meV/atom/ps.

    A tiny model (each step costs its ~1,000 kernel dispatches, whatever the width)."""
    model = checkpoint(tmp_path, perturbed_potential("sake", hidden=8, layers=2))
    atoms = ethanol()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        system = MLPotential("sake", model=model).createSystem(openmm_topology(atoms), dtype="float64")
    integrator = openmm.VerletIntegrator(0.0005 * unit.picoseconds)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions / 10)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    times, totals = [], []
    for block in range(201):
        if block:
            integrator.step(20)
        state = context.getState(getEnergy=True)
        total = state.getPotentialEnergy() + state.getKineticEnergy()
        times.append(state.getTime().value_in_unit(unit.picoseconds))
        totals.append(total.value_in_unit(unit.kilojoule_per_mole) * KJ)  # eV
    assert times[-1] == pytest.approx(2.0)
    drift = np.polyfit(times, totals, 1)[0] * 1000 / len(atoms)
    assert abs(drift) < 0.1, f"drift {drift:.3g} meV/atom/ps"
    assert np.std(totals) > 0  # the run moved


# --- ML/MM: ethanol in TIP3P ---------------------------------------------------------------------------

def solvated_ethanol():
    """Ethanol (named as in tests/data/ethanol_ff.xml) in a 2 nm box of TIP3P water: topology, positions
    (nm), the MM System (PME, 0.9 nm cutoff, rigid water) and the ethanol atoms' indices."""
    atoms = ase.build.molecule("CH3CH2OH")
    topology = openmm_topology(atoms, residue="ETH", names=["C1", "C2", "O", "HO", "H21", "H22", "H11", "H12",
                                                            "H13"])
    forcefield = app.ForceField(str(DATA / "ethanol_ff.xml"), "tip3p.xml")
    modeller = app.Modeller(topology, atoms.positions / 10 + 1.0)
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(2.0, 2.0, 2.0) * unit.nanometer)
    mm = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer,
                                 constraints=app.HBonds, rigidWater=True)
    return modeller.topology, modeller.positions, mm, list(range(len(atoms)))


@pytest.mark.slow
def test_ml_mm_ethanol_in_water():
    topology, positions, mm, ml = solvated_ethanol()
    waters = sum(1 for r in topology.residues() if r.name == "HOH")
    assert 200 <= waters <= 400
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mixed = MLPotential("sake", model="sake_ethanol").createMixedSystem(topology, mm, ml, forceGroup=1,
                                                                           cutoff=1.0, dtype="float32")
    # ethanol's MM internal terms are gone; the water's stay
    for force in mixed.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            assert not any({*force.getBondParameters(b)[:2]} <= set(ml) for b in range(force.getNumBonds()))
        if isinstance(force, openmm.HarmonicAngleForce):
            assert not any({*force.getAngleParameters(a)[:3]} <= set(ml) for a in range(force.getNumAngles()))
    assert not any({*mixed.getConstraintParameters(c)[:2]} <= set(ml) for c in range(mixed.getNumConstraints()))
    assert mixed.getNumConstraints() == 3 * waters
    ml_forces = [f for f in mixed.getForces() if f.getForceGroup() == 1]
    assert len(ml_forces) == 1

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtoseconds)
    context = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 50)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 2)
    ethanol_atoms = ase.build.molecule("CH3CH2OH")
    criterion = BondCriterion.from_atoms(ethanol_atoms)
    for _ in range(10):
        integrator.step(100)
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)[ml]
        assert criterion.first_broken(x) is None, criterion.first_broken(x)

    # the ML force covers ethanol alone and equals SAKECalculator on the same coordinates
    state = context.getState(getPositions=True, getForces=True, getEnergy=True, groups={1})
    x = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert np.all(f[len(ml):] == 0)
    ethanol_atoms.positions = x[ml]
    from sake_md.shipped import shipped_potential

    reference = reference_results(shipped_potential(), ethanol_atoms, "float32", cutoff=10.0)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert_matches((energy, f[ml]), reference, "float32")


def test_serialized_system_and_interpolation(tmp_path):
    """OpenMM pickles a PythonForce's function to serialize a System (XmlSerializer) and to clone forces
    (openmm-ml's interpolate=True): both work and keep the numbers.

    The PythonForce explicitly: openmm-torch 1.5's PyPI wheel, built against OpenMM 8.5, segfaults when it
    deserializes a TorchForce under OpenMM 8.6 (SerializationNode::getStringProperty now returns by value)."""
    model = checkpoint(tmp_path, perturbed_potential("sake"))
    atoms = ethanol()
    topology = openmm_topology(atoms, residue="ETH", names=["C1", "C2", "O", "HO", "H21", "H22", "H11", "H12", "H13"])
    potential = MLPotential("sake", model=model)
    system = potential.createSystem(topology, dtype="float64", force="python")
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    mm = app.ForceField(str(DATA / "ethanol_ff.xml")).createSystem(topology, nonbondedMethod=app.NoCutoff)
    mixed = potential.createMixedSystem(topology, mm, range(len(atoms)), interpolate=True, dtype="float64",
                                        force="python")
    x = atoms.positions / 10
    energy = context_results(system, x)[0]
    assert context_results(copy, x)[0] == energy
    context = openmm.Context(mixed, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    ends = []
    for lam in (0.0, 1.0):
        context.setParameter("lambda_interpolate", lam)
        ends.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert ends[0] == pytest.approx(context_results(mm, x)[0], rel=1e-6)
    assert ends[1] == pytest.approx(energy, rel=1e-9)


# --- bad input: one clear error each ---------------------------------------------------------------------

def test_unknown_element_is_refused_naming_the_atom(tmp_path):
    model = checkpoint(tmp_path, perturbed_potential("sake"))  # knows H, C, N, O
    atoms = Atoms("COHCl", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1.0, 0], [0, 0, 1.8]])
    with pytest.raises(InputError, match=r"atom 3 .* Cl \(Z=17\).*it knows H, C, N, O"):
        MLPotential("sake", model=model).createSystem(openmm_topology(atoms))


def test_non_checkpoint_file_is_refused(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a sake_md checkpoint"):
        MLPotential("sake", model=str(bad)).createSystem(openmm_topology(ethanol()))
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a shipped"):
        MLPotential("sake", model="no_such_potential")


def test_dense_model_with_periodic_topology_is_refused(tmp_path):
    model = checkpoint(tmp_path, perturbed_potential("sake"))
    atoms = ethanol()
    atoms.cell, atoms.pbc = [12.0, 12.0, 12.0], True
    with pytest.raises(InputError, match="periodic .* dense"):
        MLPotential("sake", model=model).createSystem(openmm_topology(atoms))


def test_engines_import_only_the_inference_layer():
    import subprocess
    import sys

    code = ("import sys, sake_md.engines.openmm, sake_md.engines.openmm_run, sake_md.engines.ipi; "
            "print(sorted(m for m in sys.modules if m.startswith(('sake_md.train', 'sake_md.cli', 'sake_md.study', "
            "'sake_md.objective', 'sake_md.compile_train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_sake_md_does_not_import_openmm():
    import subprocess
    import sys

    code = "import sys, sake_md, sake_md.cli; print(any(m.split('.')[0] in ('openmm', 'openmmml', 'openmmtorch') " \
           "for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


torch.set_num_threads(1)


def test_sake_md_openmm_command(tmp_path, monkeypatch):
    """``sake-md openmm``: sake-md run's files (extxyz that ASE reads, the energy log) and summary."""
    from click.testing import CliRunner

    from sake_md.cli import main

    model = checkpoint(tmp_path, perturbed_potential("sake", hidden=8, layers=2))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["openmm", "--potential", model, "--steps", "20", "--ensemble", "nve",
                                       "--dtype", "float64", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "simulated 0.0100 ps (20 steps of 0.5 fs, nve, 9 atoms)" in result.output
    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    assert len(frames) == 3
    log = np.loadtxt(tmp_path / "md.log")
    assert log[:, 0].tolist() == [0, 10, 20]
    # the frame's energy is the model's at the frame's positions, in eV
    assert frames[-1].get_potential_energy() == pytest.approx(log[-1, 3], abs=1e-5)
    assert reference_results(model, frames[-1], "float64")[0] * KJ == pytest.approx(log[-1, 3], abs=1e-5)
    result = CliRunner().invoke(main, ["openmm", "--potential", model, "--ensemble", "bussi", "--steps", "1"])
    assert result.exit_code != 0 and "bussi" in result.output


def test_dcd_trajectory_that_mdtraj_reads(tmp_path):
    mdtraj = pytest.importorskip("mdtraj")
    from sake_md.engines.openmm_run import run_openmm
    from sake_md.md.run import MDSettings

    model = checkpoint(tmp_path, perturbed_potential("sake", hidden=8, layers=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_openmm(model, None, MDSettings(steps=20), traj=tmp_path / "md.dcd", log=tmp_path / "md.log",
                   progress=False)
    extxyz = tmp_path / "md.extxyz"
    run_openmm(model, None, MDSettings(steps=20), traj=extxyz, progress=False, force="python")
    traj = mdtraj.load(str(tmp_path / "md.dcd"), top=str(tmp_path / "md.pdb"))
    assert traj.n_frames == 3 and traj.n_atoms == 9
    np.testing.assert_allclose(traj.xyz[-1] * 10, ase.io.read(extxyz, -1).positions, atol=1e-4)  # same seed, run
