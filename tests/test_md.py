"""``sake-md run`` and its library: ensembles, collapse detection, interruption, energy conservation."""

import os
import signal
import subprocess
import sys
import time

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from ase import units
from click.testing import CliRunner

from sake_md import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.cli import main
from sake_md.md.bonds import BondCriterion, find_bonds
from sake_md.md.replicas import ReplicaState, SAKEForces, VelocityVerlet, maxwell_boltzmann, simulate
from sake_md.md.run import EXIT_COLLAPSED, MDSettings, energy_drift, run_md

from .physics import small_potential


@pytest.fixture
def checkpoint(tmp_path):
    return str(save_checkpoint(tmp_path / "small.pt", small_potential()))


@pytest.fixture
def exploding_checkpoint(tmp_path):
    """Random weights × 200: forces of tens of eV/Å, which a 2 fs step turns into a collapse within ~15 steps."""
    return str(save_checkpoint(tmp_path / "wild.pt", small_potential(energy_scale=200.0)))


def invoke(args, tmp_path):
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def log_rows(path):
    return np.loadtxt(path, ndmin=2)


@pytest.mark.parametrize("ensemble", ["nve", "langevin", "nose-hoover", "bussi"])
def test_run_every_ensemble(ensemble, checkpoint, tmp_path):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    result = invoke(["--potential", checkpoint, "--ensemble", ensemble, "--steps", "20", "--interval", "5",
                     "--traj", str(traj), "--log", str(log), "--seed", "1"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "steps/s" in result.output and "stable" in result.output
    frames = ase.io.read(traj, ":")
    assert len(frames) == 5 and len(log_rows(log)) == 5  # steps 0, 5, 10, 15, 20
    assert np.isfinite(frames[-1].get_potential_energy())
    assert ("energy drift" in result.output) == (ensemble == "nve")


def test_run_writes_ase_trajectory_and_takes_a_structure_file(checkpoint, tmp_path):
    start = tmp_path / "water.xyz"
    ase.io.write(start, ase.build.molecule("H2O"))
    result = invoke(["--potential", checkpoint, "--structure", str(start), "--steps", "6", "--interval", "3",
                     "--traj", str(tmp_path / "t.traj"), "--log", str(tmp_path / "t.log")], tmp_path)
    assert result.exit_code == 0, result.output
    frames = ase.io.read(tmp_path / "t.traj", ":")
    assert len(frames) == 3 and frames[0].get_chemical_formula() == "H2O"


def test_run_without_the_default_potential_says_so(tmp_path, monkeypatch):
    import sake_md.shipped

    monkeypatch.setattr(sake_md.shipped, "DEFAULT_POTENTIAL", "absent.pt")
    # water: no shipped potential was trained on it (ethanol would pick sake_ethanol.pt by its composition)
    result = invoke(["--steps", "1", "--structure", "H2O"], tmp_path)
    assert result.exit_code == 1
    assert "default potential" in result.output and "--potential" in result.output


def test_unknown_element_refused_before_the_run(checkpoint, tmp_path):
    traj = tmp_path / "md.extxyz"
    result = invoke(["--potential", checkpoint, "--structure", "CH3Cl", "--traj", str(traj),
                     "--log", str(tmp_path / "md.log")], tmp_path)
    assert result.exit_code == 1
    assert "Cl (Z=17)" in result.output and "not trained on" in result.output
    assert not traj.exists()


def test_unknown_molecule_name(checkpoint, tmp_path):
    result = invoke(["--potential", checkpoint, "--structure", "unobtainium"], tmp_path)
    assert result.exit_code == 1 and "neither a file nor a molecule name" in result.output


def test_collapse_stops_with_its_exit_status_and_keeps_the_good_frames(exploding_checkpoint, tmp_path):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    result = invoke(["--potential", exploding_checkpoint, "--timestep-fs", "2", "--steps", "2000",
                     "--interval", "2", "--traj", str(traj), "--log", str(log)], tmp_path)
    assert result.exit_code == EXIT_COLLAPSED == 3, result.output
    assert "COLLAPSED at step" in result.output and "Å" in result.output
    frames = ase.io.read(traj, ":")
    assert 1 <= len(frames) == len(log_rows(log)) < 1000
    criterion = BondCriterion.from_atoms(ase.build.molecule("CH3CH2OH"))
    assert all(criterion.first_broken(f.positions) is None for f in frames)  # every kept frame is intact


def test_collapse_names_the_bond():
    atoms = ase.build.molecule("CH3CH2OH")
    criterion = BondCriterion.from_atoms(atoms)
    assert len(criterion.bonds) == len(find_bonds(atoms)) == 8  # C–C, C–O, O–H, 5 C–H
    stretched = atoms.positions.copy()
    c, o = 1, 2  # the C–O bond of ASE's ethanol
    assert (c, o) in {tuple(b) for b in criterion.bonds} and atoms.get_chemical_symbols()[o] == "O"
    stretched[o] += 0.6 * (stretched[o] - stretched[c]) / np.linalg.norm(stretched[o] - stretched[c])
    broken = criterion.first_broken(stretched)
    assert (broken.i, broken.j, broken.symbols) == (1, 2, ("C", "O"))
    assert criterion.first_broken(np.full_like(stretched, np.nan)) is not None
    assert criterion.first_broken(atoms.positions + 0.1) is None


def test_reference_dataset_sets_the_bond_lengths(checkpoint, tmp_path):
    atoms = ase.build.molecule("CH3CH2OH")
    frames = [atoms.copy() for _ in range(3)]
    for k, f in enumerate(frames):
        f.positions *= 1.0 + 0.01 * k
    criterion = BondCriterion.from_atoms(atoms, np.stack([f.positions for f in frames]))
    np.testing.assert_allclose(criterion.reference, 1.01 * BondCriterion.from_atoms(atoms).reference)
    ase.io.write(tmp_path / "ref.extxyz", frames)
    result = invoke(["--potential", checkpoint, "--steps", "4", "--reference", str(tmp_path / "ref.extxyz"),
                     "--traj", "", "--log", ""], tmp_path)
    assert result.exit_code == 0, result.output
    result = invoke(["--potential", checkpoint, "--steps", "4", "--structure", "H2O",
                     "--reference", str(tmp_path / "ref.extxyz"), "--traj", "", "--log", ""], tmp_path)
    assert result.exit_code == 1 and "different molecule" in result.output


def test_sigterm_leaves_readable_trajectory_and_log(tmp_path):
    # no forces and 0.01 K: nothing can collapse for thousands of steps, so only the signal stops the run
    quiet = str(save_checkpoint(tmp_path / "quiet.pt", small_potential(energy_scale=0.0)))
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    cmd = [sys.executable, "-m", "sake_md.cli", "run", "--potential", quiet, "--steps", "1000000", "--no-compile",
           "--temperature-K", "0.01", "--interval", "1", "--traj", str(traj), "--log", str(log), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted by SIGTERM" in out
    frames = ase.io.read(traj, ":")
    rows = log_rows(log)
    assert len(frames) >= 5 and len(rows) == len(frames)
    assert all(len(f) == 9 and np.isfinite(f.positions).all() for f in frames)


def test_nve_reports_drift(checkpoint, tmp_path):
    result = invoke(["--potential", checkpoint, "--ensemble", "nve", "--dtype", "float64", "--steps", "100",
                     "--traj", "", "--log", ""], tmp_path)
    assert result.exit_code in (0, EXIT_COLLAPSED), result.output
    line = next(x for x in result.output.splitlines() if x.startswith("energy drift"))
    assert abs(float(line.split()[2])) < 0.1  # meV/atom/ps


def test_energy_drift_fit():
    t = np.linspace(0, 2, 50)
    assert energy_drift(t, 1.0 + 0.009 * t, 9) == pytest.approx(1.0)  # 9 meV/ps over 9 atoms


def test_nve_conserves_energy_with_a_random_sake_potential():
    """Velocity Verlet, float64, 2000 steps of 0.5 fs from 300 K on a random (smooth) SAKE model."""
    potential = small_potential().double()
    atoms = ase.build.molecule("CH3CH2OH")
    state = ReplicaState.from_atoms([atoms])
    maxwell_boltzmann(state, 300.0, torch.Generator().manual_seed(0))
    times, total, kinetic = [], [], []

    def observe(step, s):
        times.append(step * 0.5e-3)
        kinetic.append(s.kinetic_energy().item())
        total.append(s.energy.item() + kinetic[-1])

    simulate(state, VelocityVerlet(0.5 * units.fs), SAKEForces.for_atoms(potential, [atoms]), 2000, 10, observe)
    drift = energy_drift(np.array(times), np.array(total), len(atoms))
    assert np.std(kinetic) > 0.01  # eV: the dynamics is not trivial
    assert abs(drift) < 1e-3  # meV/atom/ps
    assert np.std(total) / np.std(kinetic) < 1e-4


def test_run_md_library_returns_summary():
    atoms = ase.build.molecule("CH3CH2OH")
    summary = run_md(atoms, SAKECalculator(small_potential()), MDSettings("langevin", steps=10, interval=5),
                     progress=False)
    assert summary.steps == 10 and summary.exit_status == 0 and summary.stable
    assert summary.time_ps == pytest.approx(10 * 0.5e-3)
