"""Committees: mean and spread against a direct numpy computation over the members, the stacked call
against one call per member, refused mismatches, the MD stop and warning, calibration and early warning."""

import copy
import json

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sake_md import SAKECalculator
from sake_md.calibration import binned_calibration, evaluate_committee
from sake_md.checkpoint import save_checkpoint
from sake_md.cli import main
from sake_md.committee import CommitteeCalculator, predict_dataset
from sake_md.data import frames_to_dataset
from sake_md.errors import CommitteeError, InputError
from sake_md.md.early_warning import (
    committee_deviation_along,
    early_warning,
    first_crossing,
    summarise_lead_times,
    warning_lead_time,
)
from sake_md.md.run import EXIT_UNCERTAIN
from sake_md.model import ModelConfig, SAKEPotential
from sake_md.spatial import SPATIAL_BLOCKS

from .physics import SMALL_CONFIG, small_potential
from .test_data import emt_frames

MOLECULES = ("CH3CH2OH", "H2O", "CH3OH")  # mixed sizes: water is padded in a batch with ethanol


def molecules():
    rng = np.random.default_rng(3)
    frames = [ase.build.molecule(name) for name in MOLECULES]
    for atoms in frames:
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return frames


def by_member(potentials, frames):
    """Each member on its own: energies (M, S) and forces S × (M, N, 3)."""
    outs = [SAKECalculator(p).predict(frames) for p in potentials]
    energy = np.array([[o["energy"] for o in out] for out in outs])
    forces = [np.stack([out[s]["forces"] for out in outs]) for s in range(len(frames))]
    return energy, forces


def test_identical_members_have_zero_deviation_and_equal_one_member():
    potential = small_potential(0, dtype=torch.float64)
    committee = CommitteeCalculator([potential, copy.deepcopy(potential), copy.deepcopy(potential)])
    single = SAKECalculator(potential)
    for atoms, one in zip(molecules(), single.predict(molecules()), strict=True):
        atoms.calc = committee
        np.testing.assert_allclose(atoms.get_potential_energy(), one["energy"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), one["forces"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(committee.results["energies"], one["energies"], rtol=0, atol=1e-12)
        assert committee.get_property("energy_std", atoms) < 1e-10
        assert committee.results["forces_std"].shape == (len(atoms),)
        assert np.all(committee.results["forces_std"] < 1e-12) and committee.results["forces_std_max"] < 1e-12


def test_mean_and_deviation_equal_numpy_over_members():
    """Four members in two configurations (two stacked groups, interleaved): every statistic equals numpy
    over the members evaluated one by one, which also shows the stacked call equals a loop."""
    other = SAKEPotential([1, 6, 8], ModelConfig(**{**SMALL_CONFIG, "hidden": 8}), energy_scale=2.0,
                          energy_shift=-3.0).double()
    potentials = [small_potential(0, dtype=torch.float64), other, small_potential(1, dtype=torch.float64),
                  small_potential(2, energy_scale=3.0, dtype=torch.float64)]
    committee = CommitteeCalculator(potentials)
    assert sorted(len(stacked) for _, stacked in committee.committee.groups) == [1, 3]
    frames = molecules()
    energy, forces = by_member(potentials, frames)
    for s, out in enumerate(committee.predict(frames, batch_size=3)):
        f = forces[s]
        np.testing.assert_allclose(out["committee_energy"], energy[:, s], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["committee_forces"], f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out["energy"], energy[:, s].mean(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["energy_std"], energy[:, s].std(), rtol=1e-9)
        np.testing.assert_allclose(out["forces"], f.mean(0), rtol=0, atol=1e-12)
        sigma = np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0))
        np.testing.assert_allclose(out["forces_std"], sigma, rtol=1e-9)
        assert out["forces_std_max"] == pytest.approx(sigma.max(), rel=1e-9) and sigma.max() > 1e-4
        assert out["energies"].sum() == pytest.approx(out["energy"], abs=1e-10)


@pytest.mark.parametrize("variant", list(SPATIAL_BLOCKS))
def test_every_variant_stacks(variant):
    options = {"sake-sh": {"lmax": 2}, "sake-dot": {"channels": 8, "n_basis": 4}}.get(variant, {})
    config = ModelConfig(variant=variant, hidden=8, heads=2, layers=2, radial=8, options=options)
    potentials = []
    for seed in range(2):
        torch.manual_seed(seed)
        potentials.append(SAKEPotential([1, 6, 8], config).double())
    frames = molecules()[:2]
    energy, forces = by_member(potentials, frames)
    for s, out in enumerate(CommitteeCalculator(potentials).predict(frames)):
        np.testing.assert_allclose(out["committee_energy"], energy[:, s], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["committee_forces"], forces[s], rtol=0, atol=1e-12)


def test_mismatched_members_are_refused(tmp_path):
    a = save_checkpoint(tmp_path / "a.pt", small_potential(0))
    b = save_checkpoint(tmp_path / "b.pt", small_potential(1))
    nitrogen = save_checkpoint(tmp_path / "n.pt", small_potential(2, numbers=(1, 6, 7, 8)))
    double = save_checkpoint(tmp_path / "f64.pt", small_potential(3, dtype=torch.float64))
    data = torch.load(b, weights_only=True)
    data["units"] = {**data["units"], "energy": "kcal/mol"}
    kcal = tmp_path / "kcal.pt"
    torch.save(data, kcal)
    for odd, what in ((nitrogen, "species"), (double, "dtypes"), (kcal, "units")):
        with pytest.raises(CommitteeError, match=what) as error:
            CommitteeCalculator([a, b, odd])
        assert str(odd) in str(error.value) and str(a) in str(error.value)
    assert "H C N O" in str(pytest.raises(CommitteeError, CommitteeCalculator, [a, nitrogen]).value)
    CommitteeCalculator([a, double], dtype="float64")  # one dtype chosen for all: accepted
    for lonely in ([a], str(a)):
        with pytest.raises(CommitteeError):
            CommitteeCalculator(lonely)
    with pytest.raises(TypeError, match="unknown keyword.*devcie; valid: models, device, dtype"):
        CommitteeCalculator([a, b], devcie="cpu")
    with pytest.raises(CommitteeError, match="sparse-mode"):  # the stacked call would compute them dense
        CommitteeCalculator([small_potential(0).with_cutoff(2.0), small_potential(1).with_cutoff(2.0)])


# --- sake-md run -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def committee_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("committee")
    return [str(save_checkpoint(folder / f"m{s}.pt", small_potential(s, energy_scale=0.3))) for s in range(3)]


def run(files, tmp_path, name, *args):
    potentials = [arg for f in files for arg in ("--potential", f)]
    traj, log = tmp_path / f"{name}.extxyz", tmp_path / f"{name}.log"
    settings = ["--ensemble", "nve", "--steps", "30", "--temperature-K", "50", "--seed", "2"]
    result = CliRunner().invoke(main, ["run", "--no-progress", *potentials, *settings, "--traj", str(traj),
                                       "--log", str(log), *args])
    return result, traj, np.loadtxt(log, ndmin=2)


def test_stop_threshold_ends_the_run_with_its_exit_status(committee_files, tmp_path):
    free, free_traj, rows = run(committee_files, tmp_path, "free", "--interval", "1")
    assert free.exit_code == 0, free.output
    assert rows.shape == (31, 7) and "largest per-atom force deviation" in free.output
    deviation = committee_deviation_along(free_traj, committee_files)  # the frames, recomputed
    np.testing.assert_allclose(rows[:, -1], deviation, rtol=0, atol=1e-6)  # the log's column, 6 decimals
    # a threshold first passed at step k > 0, with the frames of a run that does not stop as reference
    k = next(k for k in range(3, 31) if deviation[k] > deviation[:k].max() + 1e-7)
    threshold = float(deviation[:k].max() + deviation[k]) / 2

    stopped, traj, rows = run(committee_files, tmp_path, "stopped", "--interval", "5", "--max-force-std",
                              str(threshold))
    assert stopped.exit_code == EXIT_UNCERTAIN == 4, stopped.output
    assert f"STOPPED at step {k}" in stopped.output
    frames = ase.io.read(traj, ":")
    steps = [*range(0, k, 5), k]  # the regular frames, and the one that passed the threshold
    assert rows[:, 0].tolist() == steps and len(frames) == len(steps)
    np.testing.assert_allclose(rows[:, -1], deviation[steps], rtol=0, atol=1e-6)
    reference = ase.io.read(free_traj, ":")
    for step, frame in zip(steps, frames, strict=True):
        np.testing.assert_allclose(frame.positions, reference[step].positions, atol=1e-6)

    warned, _, rows = run(committee_files, tmp_path, "warned", "--warn-force-std", str(threshold))
    assert warned.exit_code == 0, warned.output
    assert warned.output.count("warning:") == 1 and f"at step {k} " in warned.output
    assert rows[-1, 0] == 30


def test_thresholds_need_a_committee(committee_files, tmp_path):
    result = CliRunner().invoke(main, ["run", "--no-progress", "--potential", committee_files[0], "--steps", "2",
                                       "--max-force-std", "0.1", "--traj", "", "--log", ""])
    assert result.exit_code == 1 and "need a committee" in result.output


# --- sake-md eval: errors of the mean and calibration --------------------------------------------------

def test_calibration_of_a_calibrated_and_an_overconfident_deviation():
    rng = np.random.default_rng(0)
    sigma = rng.lognormal(mean=-2.0, sigma=0.8, size=40000)
    error = np.linalg.norm(rng.normal(size=(40000, 3)) * (sigma / np.sqrt(3))[:, None], axis=-1)
    calibrated = binned_calibration(sigma, error, bins=5)
    assert [b["count"] for b in calibrated["bins"]] == [8000] * 5
    edges = [(b["std_min"], b["std_max"]) for b in calibrated["bins"]]
    assert all(lo <= hi for lo, hi in edges) and all(a[1] <= b[0] for a, b in zip(edges, edges[1:], strict=False))
    assert all(abs(b["ratio"] - 1) < 0.05 for b in calibrated["bins"]) and abs(calibrated["ratio"] - 1) < 0.03
    assert calibrated["spearman"] > 0.4
    overconfident = binned_calibration(sigma, 2 * error, bins=5)
    assert all(abs(b["ratio"] - 2) < 0.1 for b in overconfident["bins"])
    unrelated = binned_calibration(sigma, rng.permutation(error), bins=5)
    assert abs(unrelated["spearman"]) < 0.05


def test_eval_of_a_committee(committee_files, tmp_path):
    frames = emt_frames(5, seed=1)
    data = tmp_path / "d.extxyz"
    ase.io.write(data, frames, format="extxyz")
    png = tmp_path / "calibration.png"
    result = CliRunner().invoke(main, ["eval", *committee_files[:2], "--potential", committee_files[2], "--data",
                                       str(data), "--json", "--bins", "3", "--calibration-plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    mean = CommitteeCalculator(committee_files).predict(frames)
    df = np.concatenate([(m["forces"] - a.get_forces()).ravel() for m, a in zip(mean, frames, strict=True)])
    assert report["force_mae_meV_A"]["value"] == pytest.approx(1e3 * np.abs(df).mean(), rel=1e-6)
    assert report["members"] == len(report["member_errors"]) == 3
    single = SAKECalculator(committee_files[1]).predict(frames)
    df1 = np.concatenate([(m["forces"] - a.get_forces()).ravel() for m, a in zip(single, frames, strict=True)])
    assert report["member_errors"][1]["force_mae_meV_A"] == pytest.approx(1e3 * np.abs(df1).mean(), rel=1e-6)
    forces = report["calibration"]["forces"]
    assert sum(b["count"] for b in forces["bins"]) == 5 * 9 and len(forces["bins"]) == 3
    sigma = 1e3 * np.sort(np.concatenate([m["forces_std"] for m in mean]))
    np.testing.assert_allclose(forces["bins"][0]["std_rms"], np.sqrt(np.mean(sigma[:15] ** 2)), rtol=1e-6)
    assert png.exists() or "matplotlib is not installed" in result.output
    text = CliRunner().invoke(main, ["eval", *committee_files, "--data", str(data)]).output
    assert "calibration: per-atom force deviation" in text and "Spearman" in text
    report, *_ = evaluate_committee(committee_files, data, bins=2, n_bootstrap=10, return_predictions=True)
    assert len(report["calibration"]["energy"]["bins"]) == 2


def test_a_dataset_goes_straight_into_the_members(committee_files):
    """``predict_dataset`` (``sake-md eval``: padded batches of the dataset, no ASE Atoms) gives exactly what the
    calculator gives for the same frames as Atoms, over batches of mixed sizes; unknown elements are refused."""
    frames = [*emt_frames(3, seed=1), *emt_frames(2, seed=2, molecule="H2O"), *emt_frames(2, seed=3, molecule="CH3OH")]
    data = frames_to_dataset(frames, "energy", "forces", "frames")
    calc = CommitteeCalculator(committee_files, dtype="float64")
    for got, expected in zip(predict_dataset(calc.committee, data, batch_size=3), calc.predict(frames, batch_size=3),
                             strict=True):
        assert list(got) == list(expected)
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key])
    with pytest.raises(InputError, match="frame 0 of nitrogen.*N \\(Z=7\\)"):
        predict_dataset(calc.committee, frames_to_dataset([ase.build.molecule("NH3")], "energy", "forces", "nitrogen",
                                                          labelled=False))


# --- early warning along a trajectory ----------------------------------------------------------------

def test_lead_time_before_a_collapse():
    times = np.arange(11) * 0.5  # ps
    deviation = np.array([0.1] * 6 + [0.3, 0.5, 0.8, 1.2, 2.0])  # rises from t = 3 ps
    assert first_crossing(times, deviation, 0.2) == 3.0
    assert warning_lead_time(times, deviation, 0.2, collapse_ps=4.5) == pytest.approx(1.5)
    assert warning_lead_time(times, deviation, 0.6, collapse_ps=4.0) == pytest.approx(0.0)  # crossed at collapse
    assert warning_lead_time(times, deviation, 1.0, collapse_ps=4.0) is None  # only after the collapse
    assert warning_lead_time(times, deviation, 5.0, collapse_ps=5.0) is None  # never
    summary = summarise_lead_times([1.5, None, 0.5])
    assert summary == {"collapsed_runs": 3, "warned": 2, "median_lead_ps": 1.0, "min_lead_ps": 0.5}


def test_deviation_along_a_trajectory_file(committee_files, tmp_path):
    frames = []
    for k in range(3):  # ethanol with one carbon pulled further and further out
        atoms = molecules()[0]
        atoms.positions[0] += 0.3 * k
        frames.append(atoms)
    path = tmp_path / "t.extxyz"
    ase.io.write(path, frames, format="extxyz")
    along = committee_deviation_along(path, committee_files, batch_size=2)
    committee = CommitteeCalculator(committee_files)
    direct = [committee.predict([a])[0]["forces_std_max"] for a in frames]
    np.testing.assert_allclose(along, direct, rtol=1e-6)
    threshold = float(along.min() + along.max()) / 2
    warning = early_warning(path, committee, collapse_ps=0.02, thresholds=[threshold, 1e9], frame_interval_ps=0.01)
    np.testing.assert_allclose(warning.times_ps, [0.0, 0.01, 0.02])
    crossing = 0.01 * np.flatnonzero(along > threshold)[0]
    assert warning.lead_ps[threshold] == pytest.approx(0.02 - crossing) and warning.lead_ps[1e9] is None
    assert json.loads(json.dumps(warning.to_dict()))["collapse_ps"] == 0.02


def test_the_study_deviation_is_committee_deviation_along(committee_files):
    """The study's committee records (``study.committee_md``) use ``committee_deviation_along``; it gives
    exactly what the study's own ``deviations`` gave before (kept here as the reference), over several
    batches of 64 frames."""
    from sake_md.study.committee_md import molecule_frames

    def study_deviations_before(calc, numbers, positions, batch_size=64):
        from ase import Atoms

        frames = [Atoms(numbers=numbers, positions=x) for x in np.asarray(positions, dtype=np.float64)]
        return np.array([o["forces_std_max"] for o in calc.predict(frames, batch_size)]) if frames else np.zeros(0)

    ethanol = molecules()[0]
    rng = np.random.default_rng(5)
    positions = ethanol.positions + rng.normal(scale=0.1, size=(150, len(ethanol), 3))
    for dtype in (None, "float64"):
        calc = CommitteeCalculator(committee_files, dtype=dtype)
        before = study_deviations_before(calc, ethanol.numbers, positions)
        after = committee_deviation_along(molecule_frames(ethanol.numbers, positions), calc, batch_size=64)
        np.testing.assert_array_equal(after, before)
        assert after.shape == (150,) and after.dtype == np.float64
