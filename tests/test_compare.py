"""The MD stability protocol and ``sake-md compare``: presets, h(r), stability times, force errors, outputs."""

import json

import ase.build
import numpy as np
import pytest
from click.testing import CliRunner

from sake_md import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.cli import main
from sake_md.cli_options import parse_time_ps
from sake_md.errors import DataError, InputError
from sake_md.md.rdf import BINS, h_of_r, hr_error
from sake_md.md.reference import read_reference
from sake_md.md.stability import PRESETS, StabilityPreset, force_errors, run_stability
from sake_md.units import KCAL_PER_MOL

from .physics import small_potential


def potential(energy_scale=1.0, seed=0):
    return small_potential(seed, energy_scale)


def write_rmd17(path, frames=12, seed=0, forces=None):
    """An rMD17-like npz of ethanol: thermal-looking frames, energies and forces in kcal/mol."""
    atoms = ase.build.molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    coords = atoms.positions + 0.03 * rng.standard_normal((frames, len(atoms), 3))
    if forces is None:
        forces = rng.standard_normal(coords.shape)
    np.savez(path, nuclear_charges=atoms.numbers, coords=coords, energies=np.zeros(frames), forces=forces)
    return path


def test_full_preset_exists():
    p = PRESETS["mdsim-md17"]
    assert (p.temperature_K, p.timestep_fs, p.time_ps, p.frame_interval, p.tdamp_steps, p.runs) == \
        (500.0, 0.5, 300.0, 100, 20, 5)
    assert p.steps() == 600_000 and p.steps(10.0) == 20_000


@pytest.mark.parametrize("text, ps", [("10ps", 10.0), ("500fs", 0.5), ("0.3ns", 300.0), ("2.5", 2.5)])
def test_parse_time(text, ps):
    assert parse_time_ps(text) == pytest.approx(ps)


def test_parse_time_refuses_nonsense():
    with pytest.raises(InputError, match="10ps"):
        parse_time_ps("ten ps")


def test_h_of_r_is_a_density_and_its_error():
    frames = np.random.default_rng(0).uniform(0, 4, (20, 9, 3))
    h = h_of_r(frames)
    assert h.shape == (500,) and np.sum(h * np.diff(BINS)) == pytest.approx(1.0)
    assert hr_error(h, h) == 0.0
    assert hr_error(h_of_r(frames * 1.3), h) > 0.1


def test_reader_converts_kcal(tmp_path):
    forces = np.ones((3, 9, 3))
    ref = read_reference(write_rmd17(tmp_path / "r.npz", frames=3, forces=forces))
    assert ref.positions.shape == (3, 9, 3)
    np.testing.assert_allclose(ref.forces, KCAL_PER_MOL)
    np.savez(tmp_path / "bad.npz", coords=np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="nuclear_charges"):
        read_reference(tmp_path / "bad.npz")


def test_stable_runs_last_the_whole_run(tmp_path):
    """No forces and 1 K: atoms drift < 0.1 Å in 0.1 ps, so every run stays intact to the end."""
    ref = read_reference(write_rmd17(tmp_path / "r.npz"))
    preset = StabilityPreset("test", temperature_K=1.0, time_ps=0.1, frame_interval=20)
    result = run_stability(potential(energy_scale=0.0), ref, ref, preset, runs=3, seed=1)
    assert [r.stability_ps for r in result.runs] == [0.1] * 3
    assert all(r.collapse is None and r.frames == 11 for r in result.runs)  # steps 0, 20, ..., 200
    # the start frames barely change: closer to the reference than the same frames stretched by 5 %
    stretched = hr_error(h_of_r(ref.positions * 1.05), h_of_r(ref.positions))
    assert 0 < result.hr_error < 0.75 * stretched
    assert result.steps == 200 and result.steps_per_s > 0


def test_collapsing_runs_stop_at_the_last_good_frame(tmp_path):
    """The same free flight at 1000 K: hydrogens fly > 0.5 Å away within tens of fs."""
    ref = read_reference(write_rmd17(tmp_path / "r.npz"))
    preset = StabilityPreset("test", temperature_K=1000.0, time_ps=1.0, frame_interval=4)
    result = run_stability(potential(energy_scale=0.0), ref, ref, preset, runs=4, seed=0)
    assert result.steps < preset.steps()  # stopped early, once every run had collapsed
    for run in result.runs:
        assert run.collapse is not None and "H" in run.collapse
        assert run.collapse_ps == pytest.approx(run.stability_ps + 4 * 0.5e-3)
        assert run.stability_ps < 0.1
        assert run.frames == round(run.stability_ps / 2e-3) + 1
    assert max(run.stability_ps for run in result.runs) > 0


def test_start_frames_are_distinct_and_reproducible(tmp_path):
    ref = read_reference(write_rmd17(tmp_path / "r.npz"))
    preset = StabilityPreset("test", temperature_K=1.0, time_ps=0.005, frame_interval=10)
    a = run_stability(potential(0.0), ref, ref, preset, runs=5, seed=3)
    b = run_stability(potential(0.0), ref, ref, preset, runs=5, seed=3)
    frames = [r.start_frame for r in a.runs]
    assert frames == [r.start_frame for r in b.runs] and len(set(frames)) == 5
    with pytest.raises(InputError, match="distinct start frames"):
        run_stability(potential(0.0), ref, ref, preset, runs=13)


def test_force_error_uses_the_calculator(tmp_path):
    model = potential()
    frames = read_reference(write_rmd17(tmp_path / "r.npz", frames=4))
    atoms = [frames.atoms(k) for k in range(4)]
    predicted = np.stack([o["forces"] for o in SAKECalculator(model).predict(atoms)])
    # reference forces 2 meV/Å above the model's, stored in kcal/mol/Å
    write_rmd17(tmp_path / "t.npz", frames=4, forces=(predicted + 0.002) / KCAL_PER_MOL)
    mae, rmse = force_errors(model, read_reference(tmp_path / "t.npz"))
    assert mae == pytest.approx(2.0, abs=1e-3) and rmse == pytest.approx(2.0, abs=1e-3)


def test_compare_cli(tmp_path):
    ref = write_rmd17(tmp_path / "ref.npz")
    test = write_rmd17(tmp_path / "test.npz", seed=1)
    a = save_checkpoint(tmp_path / "a.pt", potential(seed=0))
    b = save_checkpoint(tmp_path / "b.pt", potential(seed=1))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--preset", "mdsim-md17", "--runs", "2",
                                       "--reference", str(ref), "--test", str(test), "--time", "10fs",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["model", "stability"]
    assert any(x.startswith("a ") for x in lines) and any(x.startswith("b ") for x in lines)
    data = json.loads((out / "compare.json").read_text())
    assert [m["model"] for m in data["models"]] == ["a", "b"]
    assert data["settings"]["time_ps"] == pytest.approx(0.01)
    assert all(len(m["runs"]) == 2 and m["force_mae_meV_A"] > 0 for m in data["models"])
    assert len(data["hr_reference"]) == 500
    pytest.importorskip("matplotlib")
    assert (out / "stability.png").stat().st_size > 1000 and (out / "hr.png").stat().st_size > 1000


def test_compare_refuses_a_different_molecule(tmp_path):
    ref = write_rmd17(tmp_path / "ref.npz")
    water = ase.build.molecule("H2O")
    np.savez(tmp_path / "w.npz", nuclear_charges=water.numbers, coords=water.positions[None])
    ckpt = save_checkpoint(tmp_path / "a.pt", potential())
    result = CliRunner().invoke(main, ["compare", str(ckpt), "--reference", str(ref), "--test",
                                       str(tmp_path / "w.npz"), "--runs", "1", "--time", "1fs", "--no-progress",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "different molecule" in result.output


def test_compare_checks_every_model_before_the_first_run(tmp_path, monkeypatch):
    import sake_md.md.compare as compare_module

    def no_run(*args, **kwargs):
        raise AssertionError("a model ran before all models were checked")

    monkeypatch.setattr(compare_module, "run_stability", no_run)
    monkeypatch.setattr(compare_module, "_run_resumable", no_run)
    ref = write_rmd17(tmp_path / "ref.npz")
    good = save_checkpoint(tmp_path / "good.pt", potential())
    no_oxygen = save_checkpoint(tmp_path / "ch.pt", small_potential(numbers=(1, 6)))
    result = CliRunner().invoke(main, ["compare", str(good), str(no_oxygen), "--reference", str(ref), "--runs", "1",
                                       "--time", "1ps", "--no-progress", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "O (Z=8)" in result.output and "ch.pt" in result.output
    assert not (tmp_path / "o").exists()


def test_compare_resumes_a_killed_run_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    import sake_md.md.segments as segments

    ref = write_rmd17(tmp_path / "ref.npz")
    a = save_checkpoint(tmp_path / "a.pt", potential(seed=0))
    args = ["compare", str(a), "--runs", "2", "--reference", str(ref), "--time", "150fs", "--segment", "50fs",
            "--no-compile"]
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole"), "--no-progress"])
    assert whole.exit_code == 0, whole.output

    advance = segments.SegmentedStability.advance
    calls = []

    def killed_after_one_segment(self, until_step):
        if calls:
            raise KeyboardInterrupt  # the process dies after the first 50 fs segment was saved
        calls.append(until_step)
        return advance(self, until_step)

    monkeypatch.setattr(segments.SegmentedStability, "advance", killed_after_one_segment)
    out = tmp_path / "killed"
    killed = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert killed.exit_code == 1 and "Aborted" in killed.output  # click's answer to KeyboardInterrupt
    assert (out / "state" / "a.pt").exists() and not (out / "compare.json").exists()
    monkeypatch.setattr(segments.SegmentedStability, "advance", advance)
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output  # a fresh run never overwrites a saved one
    init, expected = segments.SegmentedStability.__init__, []

    def recording(self, *a, **k):
        expected.append(k["expected_calls"])
        init(self, *a, **k)

    monkeypatch.setattr(segments.SegmentedStability, "__init__", recording)
    resumed = CliRunner().invoke(main, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert expected == [201]  # compile="auto" weighs the 200 steps left (and the first call), not the run's 300
    monkeypatch.setattr(segments.SegmentedStability, "__init__", init)
    assert "resuming" in resumed.output and "150/150 ps" not in resumed.output and "0.15/0.15 ps" in resumed.output
    first, second = (json.loads((d / "compare.json").read_text())["models"][0] for d in (tmp_path / "whole", out))
    assert first["runs"] == second["runs"] and first["hr"] == second["hr"] and first["steps"] == second["steps"] == 300

    # the same file name with other weights (a potential replaced in place) cannot continue the saved run
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other / "a.pt", potential(seed=1))
    (out / "compare.json").unlink()
    replaced = CliRunner().invoke(main, ["compare", str(other / "a.pt"), *args[2:], "--out", str(out), "--resume"])
    assert replaced.exit_code != 0 and "run with another potential" in replaced.output
    import torch

    saved = torch.load(out / "state" / "a.pt", weights_only=True)
    del saved["run"]["identity"]["weights"]  # a state saved before the fingerprint: it continues as before
    torch.save(saved, out / "state" / "a.pt")
    assert CliRunner().invoke(main, [*args, "--out", str(out), "--resume"]).exit_code == 0
