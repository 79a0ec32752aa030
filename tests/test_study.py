"""The study tooling: a tiny study end to end (subprocess jobs, records, report, publishing), resume after a
kill, skipping finished runs, segmented MD = uninterrupted MD, and the report's numbers from fixed records."""

import copy
import json
import math
import os
import signal
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from click.testing import CliRunner
from scipy import stats

from sake_md import SAKECalculator
from sake_md.cli import main
from sake_md.committee import CommitteeCalculator
from sake_md.errors import ConfigError
from sake_md.md.reference import read_reference
from sake_md.md.segments import SegmentedStability, run_segmented
from sake_md.md.stability import StabilityPreset, run_stability
from sake_md.study import Run, load_study, runner
from sake_md.study.jobs import run_job
from sake_md.study.publish import median_seed, model_card
from sake_md.study.report import fmt_summary, load_records, record_counts, render, summarize
from sake_md.study.runner import job_slots

from .physics import small_potential
from .test_compare import write_rmd17
from .test_data import emt_frames, write_npz

TINY = """
[study]
name = "tiny study"
variants = {variants}
seeds = [0]

[paths]
root = "."
data_dir = "data"
out = "study"
potentials = "potentials"

[data]
n_valid = 4

[model]
hidden = 8
heads = 2
layers = 2
radial = 8

[training]
recipe = "budget"
batch_size = 4
energy_weight = 0.1

[md]
runs = 5
time_ps = 0.1
segment_ps = 0.05
compile = false

[molecules.ethanol]
epochs = 2
long_md = {{ seeds = [0], time_ps = 0.2 }}

[report]
ef_repeats = 2

[sizing]
steps = 1
md_steps = 2
"""


def tiny_study(folder, variants=("sake", "sake-no-spatial")):
    """A study folder with EMT-labelled ethanol as rMD17 train_01/test_01 files and its study.toml."""
    data = folder / "data"
    data.mkdir(parents=True)
    write_npz(data / "rmd17_ethanol_train_01.npz", emt_frames(12, seed=3))
    write_npz(data / "rmd17_ethanol_test_01.npz", emt_frames(8, seed=4))
    path = folder / "study.toml"
    path.write_text(TINY.format(variants=json.dumps(list(variants))))
    return path


def invoke(*args):
    result = CliRunner().invoke(main, ["study", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny study run once through the command, as subprocess jobs."""
    toml = tiny_study(tmp_path_factory.mktemp("tiny"))
    result = invoke(toml, "--jobs", "8")
    return toml, result


def test_tiny_study_runs_end_to_end_and_reports_from_its_records(finished):
    toml, result = finished
    assert result.exit_code == 0, result.output
    assert "2 runs selected, 0 done, 2 to run" in result.output
    study = load_study(toml)
    for variant in ("sake", "sake-no-spatial"):
        train = json.loads((study.records / "ethanol" / variant / "seed0.train.json").read_text())
        assert [row["epoch"] for row in train["validation_curve"]] == [1, 2]
        assert train["cost"]["epochs"] == 2 and train["cost"]["cpu_s"] > 0 and train["cost"]["samples_per_s"] > 0
        assert train["test"]["frames"] == 8 and train["test"]["force_rmse_meV_A"]["value"] > 0
        assert train["ef_ms"]["median"] > 0 and train["config"]["model"]["variant"] == variant
        assert train["config"]["data"] == "data/rmd17_ethanol_train_01.npz"  # portable, relative to the root
        md = json.loads((study.records / "ethanol" / variant / "seed0.md.json").read_text())
        assert set(md["horizons"]) == {"0.1", "0.2"}  # seed 0 on ethanol also runs the long MD
        for horizon, result_at in md["horizons"].items():
            runs = result_at["runs"]
            assert len(runs) == 5 and len({r["start_frame"] for r in runs}) == 5
            assert all(0 <= r["stability_ps"] <= float(horizon) for r in runs)
        short, long = md["horizons"]["0.1"]["runs"], md["horizons"]["0.2"]["runs"]
        assert all(a["stability_ps"] == min(b["stability_ps"], 0.1) for a, b in zip(short, long, strict=True))
        assert md["cost"]["cpu_s"] > 0 and len(md["hr_reference"]) == 500
        frames = np.load(study.run_dir(Run("ethanol", variant, 0)) / "md_frames.npz")
        assert frames["positions"].shape[:2] == (len(frames["steps"]), 5)
    readme = (study.out / "README.md").read_text()
    assert "| `sake` | 1 |" in readme and "| `sake-no-spatial` | 1 |" in readme
    assert "### MD stability, 0.1 ps" in readme and "### MD stability, 0.2 ps" in readme
    assert "Not yet recorded" not in readme
    assert (study.out / "force_rmse.png").exists() and (study.out / "validation.png").exists()


def test_second_invocation_skips_finished_runs(finished):
    toml, _ = finished
    study = load_study(toml)
    logs = sorted(study.out.rglob("metrics.jsonl"))
    before = {p: p.read_text() for p in logs + sorted(study.records.rglob("seed*.json"))}
    result = invoke(toml)
    assert result.exit_code == 0, result.output
    assert "2 runs selected, 2 done, 0 to run" in result.output and "start" not in result.output
    assert {p: p.read_text() for p in before} == before


def test_publish_copies_loadable_checkpoints_with_cards(finished):
    toml, _ = finished
    result = invoke(toml, "--report-only", "--publish")
    assert result.exit_code == 0, result.output
    potentials = load_study(toml).potentials
    calc = SAKECalculator(str(potentials / "sake-no-spatial_ethanol.pt"))
    atoms = read_reference(toml.parent / "data" / "rmd17_ethanol_test_01.npz").atoms(0)
    atoms.calc = calc
    assert np.isfinite(atoms.get_forces()).all()
    card = (potentials / "sake_ethanol.md").read_text()
    assert "seed 0" in card and "force RMSE" in card and "--variant sake --molecule ethanol --seed 0" in card
    assert 'SAKECalculator("potentials/sake_ethanol.pt")' in card  # the path users load it from
    # publishing again replaces what the study published, never a potential of the same name made by hand
    assert invoke(toml, "--report-only", "--publish").exit_code == 0
    foreign = potentials / "sake-no-spatial_ethanol"
    foreign.with_suffix(".md").write_text("# a hand-trained potential\n")
    before = foreign.with_suffix(".pt").read_bytes()
    try:
        result = invoke(toml, "--report-only", "--publish")
        assert result.exit_code != 0 and "will not publish over" in result.output
        assert foreign.with_suffix(".pt").read_bytes() == before
    finally:
        foreign.with_suffix(".md").unlink()


def test_model_card_states_stability_as_the_report_does(finished):
    """Mean ± sample std (ddof 1) over the model's runs, as in the report's table, not the population std
    that the MD record's summary holds."""
    toml, _ = finished
    study = load_study(toml)
    records = load_records(study.records)
    trained = records.trained("ethanol", "sake")
    md = copy.deepcopy(records.simulated("ethanol", "sake")[0])
    times = [0.02, 0.05, 0.1, 0.1, 0.1]  # unequal times (the tiny study's runs are all stable)
    for result in md["horizons"].values():
        for run, t in zip(result["runs"], times, strict=True):
            run["stability_ps"] = t
        result["stability_ps_mean"], result["stability_ps_std"] = np.mean(times), np.std(times)  # as recorded
    card = model_card(trained[0], trained, md, "potentials/x.pt", "study.toml")
    in_report = fmt_summary(summarize(times), interval=False)
    assert in_report == f"{np.mean(times):.2f} ± {np.std(times, ddof=1):.2f}"
    assert card.count(f"5 runs: stability {in_report} ps") == len(md["horizons"])


def test_killed_job_resumes_training_and_md(tmp_path):
    study = load_study(tiny_study(tmp_path, variants=("sake-no-spatial",)))
    run = study.select()[0]

    class Killed(Exception):
        pass

    def kill(*_):
        raise Killed

    with pytest.raises(Killed):
        run_job(study, run, on_epoch_end=kill)  # killed after epoch 1 was saved
    with pytest.raises(Killed):
        run_job(study, run, on_segment=kill)  # training resumes and finishes; MD killed after its first segment
    metrics = (study.run_dir(run) / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]  # resumed at epoch 2, not restarted
    assert torch.load(study.run_dir(run) / "md_state.pt", weights_only=True)["run"]["step"] == 100
    assert not study.record_path(run, "md").exists()
    segments = []
    run_job(study, run, on_segment=lambda r: segments.append(r.step))
    assert segments == [200, 300, 400]  # resumed at step 100
    cost = json.loads((study.run_dir(run) / "cost.json").read_text())
    assert cost["train"]["processes"] == 2 and cost["md"]["processes"] == 2
    record = json.loads(study.record_path(run, "md").read_text())
    assert record["horizons"]["0.2"]["steps"] == 400


def test_segmented_md_resumed_equals_uninterrupted(tmp_path):
    ref = read_reference(write_rmd17(tmp_path / "r.npz"))
    # 0.1 fs steps: the random model's atoms stay bonded for the 80 steps, so no run stops early
    preset = StabilityPreset("test", temperature_K=500.0, timestep_fs=0.1, time_ps=0.008, frame_interval=10)

    def fresh():
        return SegmentedStability(small_potential(0), ref, ref, preset, runs=3, seed=2)

    straight_run = fresh()
    straight = run_segmented(straight_run, [0.004, 0.008], 0.002, tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_at_60(run):
        if run.step == 60:
            raise Killed

    with pytest.raises(Killed):
        run_segmented(fresh(), [0.004, 0.008], 0.002, tmp_path / "b.pt", kill_at_60)
    resumed_run = fresh()
    resumed = run_segmented(resumed_run, [0.004, 0.008], 0.002, tmp_path / "b.pt")
    # the frames kept for the committee analysis: every 10 steps from step 0, the same after resuming
    assert straight_run.trajectory_steps == resumed_run.trajectory_steps == list(range(0, 81, 10))
    torch.testing.assert_close(resumed_run.trajectory_tensor(), straight_run.trajectory_tensor(), rtol=0, atol=0)
    frames = np.load(resumed_run.save_frames(tmp_path / "frames.npz"))
    assert frames["positions"].shape == (9, 3, len(ref.numbers), 3) and frames["time_ps"][-1] == pytest.approx(0.008)
    assert list(frames["collapse_step"]) == [-1, -1, -1]
    one_go = run_stability(small_potential(0), ref, ref, preset, runs=3, seed=2)
    for a, b in ((straight, resumed), ({0.008: one_go}, {0.008: resumed[0.008]})):
        for h in a:
            assert [vars(r) for r in a[h].runs] == [vars(r) for r in b[h].runs]
            np.testing.assert_array_equal(a[h].hr, b[h].hr)
            assert a[h].steps == b[h].steps
    assert straight[0.004].steps == 40 and straight[0.008].steps == 80
    assert straight[0.004].runs[0].stability_ps == 0.004 and straight[0.008].runs[0].frames == 9


# ---- the report from fixed records -----------------------------------------------------------------------------
FORCE_RMSE = {"sake": [10.0, 12.0, 14.0], "sake-no-spatial": [20.0, 22.0, 24.0]}
STABILITY = {"sake": [1.0] * 15, "sake-no-spatial": [1.0] * 13 + [0.25, 0.5]}


def fixture_records(folder):
    """Two variants × 3 seeds on ethanol with chosen numbers; 5 trajectories per model."""
    records = folder / "records"
    study = {"name": "fixture", "variants": ["sake", "sake-no-spatial"],
             "molecules": {"ethanol": {"epochs": 3, "seeds": [0, 1, 2], "optional": False, "long_md_seeds": [],
                                       "long_md_ps": None}},
             "data": {"train": "t.npz", "test": "s.npz", "n_valid": 50}, "model": {}, "training": {},
             "md": {"preset": "mdsim-md17", "runs": 5, "time_ps": 1.0, "seed": 0}, "report": {"baseline": "sake"}}
    (records / "ethanol").mkdir(parents=True)
    (records / "study.json").write_text(json.dumps(study))
    for variant, forces in FORCE_RMSE.items():
        folder_v = records / "ethanol" / variant
        folder_v.mkdir()
        for seed, f in enumerate(forces):
            stat = lambda x: {"value": x, "ci95": [x - 1, x + 1]}  # noqa: E731
            test = {"frames": 10, "force_rmse_meV_A": stat(f), "force_mae_meV_A": stat(f / 2),
                    "energy_rmse_meV": stat(f / 10), "energy_mae_meV": stat(f / 20)}
            run = {"molecule": "ethanol", "variant": variant, "seed": seed}
            (folder_v / f"seed{seed}.train.json").write_text(json.dumps({
                "kind": "train", "run": run, "parameters": 1000 if variant == "sake" else 500, "test": test,
                "cost": {"cpu_s": 3600.0, "epochs": 3, "samples_per_s": 50.0 + seed},
                "best": {"force_mae_meV_A": f, "epoch": 3}, "ef_ms": {"median": 2.0 if variant == "sake" else 1.0},
                "validation_curve": [{"epoch": 1, "val_force_mae_meV_A": f}], "config": {}}))
            times = STABILITY[variant][5 * seed:5 * seed + 5]
            runs = [{"start_frame": k, "stability_ps": t, "frames": 3, "hr_error": 0.1 * (k + 1),
                     "collapse": None if t == 1.0 else f"bond C0–H{k} is 2.000 Å, reference 1.100 Å",
                     "collapse_ps": None} for k, t in enumerate(times)]
            (folder_v / f"seed{seed}.md.json").write_text(json.dumps({
                "kind": "md", "run": run, "cost": {"cpu_s": 1800.0}, "hr_reference": [0.0] * 500,
                "horizons": {"1": {"runs": runs, "steps_per_s": 10.0, "hr": [0.0] * 500}}}))
    return records


def table_row(text, section, variant):
    """The row of ``variant`` in the first table after the heading ``section``."""
    part = text.split(section, 1)[1]
    return next(line for line in part.splitlines() if line.startswith(f"| `{variant}` |"))


def test_report_tables_reproduce_the_fixture_numbers(tmp_path):
    text = render(load_records(fixture_records(tmp_path)))
    # t-interval over 3 seeds: mean ± t(0.975, 2) · s/√3, t = 4.302653, s = 2
    half = 4.302653 * 2 / math.sqrt(3)
    row = table_row(text, "### Test errors", "sake")
    assert f"12.00 ± 2.00 [{12 - half:.2f}, {12 + half:.2f}]" in row and "| 3 |" in row
    assert "1.20 ± 0.20 [0.70, 1.70]" in row  # energy RMSE = force / 10
    assert "6.00 ± 1.00" in row and "0.60 ± 0.10" in row
    row = table_row(text, "### MD stability, 1 ps", "sake-no-spatial")
    times = STABILITY["sake-no-spatial"]
    assert f"{np.mean(times):.2f} ± {np.std(times, ddof=1):.2f}" in row
    assert "| 2 / 15 |" in row and "C0–H3 ×1, C0–H4 ×1" in row
    assert "| 0 / 15 |" in table_row(text, "### MD stability, 1 ps", "sake")
    row = table_row(text, "### Cost", "sake")
    assert "| 1,000 |" in row and "| 2.0 |" in row and "| 51.0 |" in row and "| 1.00 |" in row
    assert "| 0.50 |" in row and "| 10.0 |" in row
    # paired by seed: every difference +10 (force) and +1 (energy): exact sign-flip p = 2/8; 3 tests, Holm
    # multiplies the two smallest by 3 (0.75) and the largest (stability, p = 1) by 1
    row = table_row(text, "## Findings", "sake-no-spatial")
    assert ("+10.00 (+83.3%) [+10.00, +10.00]; per seed +10.00, +10.00, +10.00; exact p = 0.25 (min 0.25), "
            "Holm p = 0.75") in row
    assert "+1.00 (+83.3%) [+1.00, +1.00]; per seed +1.00, +1.00, +1.00; exact p = 0.25" in row
    # stability: seed 2 lost 0.75 and 0.5 ps on 2 of its 5 start frames: RMST difference -0.25 ps there
    assert "-0.08 (-8.3%)" in row and "per seed +0.00, +0.00, -0.25; exact p = 1 (min 0.25), Holm p = 1" in row
    assert "start frames longer/shorter/tied 0/2/13" in row and "Welch" not in row
    assert "Holm's adjustment over all 3 per-molecule tests" in text and "0.25 for 3 seeds" in text
    assert "Primary metric, force RMSE (meV/Å): `sake-no-spatial` +10.00 against `sake` (Holm p = 0.75)" in text
    # Kaplan–Meier: seed 2 of sake-no-spatial keeps 3 of 5; pooled 15 runs lose one at 0.25 and one at 0.5 ps
    row = table_row(text, "### MD stability, 1 ps", "sake-no-spatial")
    assert f"| > 1 | {13 / 15:.2f} [1.00, 1.00, 0.60] |" in row
    assert "9.00 CPU-hours recorded: training 6.00 (6 models), MD 3.00 (6 models), no committee analyses" in text
    assert "lowest test force RMSE: `sake` (12.00 meV/Å)" in text
    assert "not dominated in (force RMSE ↓, stability time ↑, E+F ms ↓): `sake`, `sake-no-spatial`" in text
    assert "Spearman ρ =" in text


def test_report_includes_the_interpretation_and_flags_it_when_records_change(tmp_path):
    records = load_records(fixture_records(tmp_path))
    assert record_counts(records) == "6 training and 6 MD records"
    current = ("<!-- written against: 6 training and 6 MD records; statistics: paired exact tests with Holm, "
               "pooled primary test, Kaplan–Meier -->\nSpatial attention matters.\n")
    text = render(records, interpretation=current)
    section = text.split("## Interpretation (written by hand")[1]
    assert "Spatial attention matters." in section and "check it" not in section and "older statistics" not in section
    older = render(records, interpretation="<!-- written against: 6 training and 6 MD records -->\nIt matters.\n")
    section = older.split("## Interpretation (written by hand")[1]
    assert "Written against the older statistics (Welch's t-tests" in section and "check it" not in section
    earlier = render(records, interpretation=current.replace("pooled primary test, ", ""))
    assert "Written against earlier statistics (paired exact tests with Holm, Kaplan–Meier)" in earlier
    stale = render(records, interpretation=current.replace("6 MD", "5 MD"))
    assert "Written against 6 training and 5 MD records; the records now hold 6 training and 6 MD records" in stale
    assert "does not say which records" in render(records, interpretation="Spatial attention matters.\n")
    assert "## Interpretation" not in render(records)


def test_statistics_helpers():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.std) == (4, 2.5, pytest.approx(np.std([1, 2, 3, 4], ddof=1)))
    assert s.lo == pytest.approx(2.5 - stats.t.ppf(0.975, 3) * s.std / 2)
    assert summarize([5.0]).n == 1 and math.isnan(summarize([5.0]).std)


def test_median_seed_is_chosen_on_validation():
    records = [{"run": {"seed": s}, "best": {"force_mae_meV_A": v}} for s, v in ((0, 5.0), (1, 9.0), (2, 7.0))]
    assert median_seed(records)["run"]["seed"] == 2
    assert median_seed(records[:2])["run"]["seed"] == 0


# ---- definition, selection, slots --------------------------------------------------------------------------------
def test_study_file_refuses_misspellings_and_bad_selections(tmp_path):
    toml = tiny_study(tmp_path)
    text = toml.read_text()
    for bad, match in ((text.replace("epochs = 2", "epoch = 2"), "unknown key"),
                       (text.replace('recipe = "budget"', 'recipe = "budget"\nepochs = 3'), "set by the study"),
                       (text.replace('"sake-no-spatial"', '"sake-nospatial"'), "unknown variant"),
                       (text.replace("runs = 5", "runz = 5"), r"\[md\]")):
        toml.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_study(toml)
    toml.write_text(text)
    study = load_study(toml)
    with pytest.raises(ConfigError, match="unknown variant"):
        study.select(variants=["sake-dot"])
    assert [r.key for r in study.select(variants=["sake"])] == ["ethanol/sake/seed0"]
    assert study.select(seeds=[7]) == []


def test_jobs_never_exceed_cores():
    assert job_slots(2, {0, 1, 2, 3}) == [(0,), (1,)]
    assert job_slots(4, {3}) == [(3,)]
    assert job_slots(3, set(range(8)), spread=True) == [(0, 1, 2), (3, 4, 5), (6, 7)]


def test_sigusr1_drains_the_study(tmp_path, monkeypatch):
    """SIGUSR1: the running job finishes (a time-budgeted training is never cut), none of the queue starts."""
    toml = tiny_study(tmp_path, variants=("sake-no-spatial",))
    study = load_study(toml)
    run = study.select()[0]
    monkeypatch.setattr(runner, "job_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(0.5)"])
    lines = []

    def echo(line):
        lines.append(line)
        if " start " in line:
            os.kill(os.getpid(), signal.SIGUSR1)  # while the first job runs

    assert runner.run_jobs(study, [run, run, run], 1, echo=echo) == {run.key: 0}
    assert sum(" start " in line for line in lines) == 1
    assert any("draining: 1 running job(s) finish, 2 not started" in line for line in lines)
    assert lines[-1].startswith("drained: 2 job(s) not started")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler does not outlive the jobs


def test_report_is_rewritten_after_each_job(tmp_path, monkeypatch):
    """A study stopped between jobs (a drain, a session's end) leaves a report that agrees with its records;
    a report that fails between jobs is said, and the jobs go on."""
    import sake_md.study as study_package

    toml = tiny_study(tmp_path)  # two variants: two jobs
    monkeypatch.setattr(runner, "job_command", lambda *a: [sys.executable, "-c", "pass"])
    calls = []

    def write_report(records, out):
        calls.append(len(calls))
        if len(calls) == 1:
            raise OSError("disk full")
        return []

    monkeypatch.setattr(study_package, "write_report", write_report)
    result = invoke(toml, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert len(calls) == 3  # after each of the two jobs, then at the end
    assert "report not rewritten (OSError: disk full)" in result.output
    assert result.output.index("report not rewritten") > result.output.index("done: ethanol/")


def test_dry_run_size_and_missing_data(tmp_path):
    toml = tiny_study(tmp_path, variants=("sake-no-spatial",))
    result = invoke(toml, "--dry-run")
    assert result.exit_code == 0 and "ethanol/sake-no-spatial/seed0" in result.output
    assert not (tmp_path / "study" / "records").exists()
    result = invoke(toml, "--size")
    assert result.exit_code == 0, result.output
    assert "suggested epochs for ethanol" in result.output and "CPU-hours" in result.output
    result = invoke(toml, "--data-dir", tmp_path / "nowhere")
    assert result.exit_code == 1 and "--data-dir" in result.output
    toml.write_text(toml.read_text().replace("[molecules.ethanol]", "[molecules.ethanol]\noptional = true"))
    assert invoke(toml).exit_code == 1  # only an optional molecule: nothing selected without --stretch


def test_a_failing_job_is_reported_and_the_rest_kept(tmp_path):
    """3 test frames cannot start 5 MD runs: training is recorded, MD fails, the study exits 1 with the log."""
    toml = tiny_study(tmp_path, variants=("sake-no-spatial",))
    write_npz(tmp_path / "data" / "rmd17_ethanol_test_01.npz", emt_frames(3, seed=4))
    result = invoke(toml)
    assert result.exit_code == 1 and "FAILED" in result.output and "job.log" in result.output
    study = load_study(toml)
    run = study.select()[0]
    assert study.record_path(run, "train").exists() and not study.record_path(run, "md").exists()
    assert "distinct start frames" in (study.run_dir(run) / "job.log").read_text()
    assert "ethanol/sake-no-spatial/seed0 (md)" in (study.out / "README.md").read_text()


def test_stacked_study_trains_a_group_together_then_finishes_each_run(tmp_path):
    """--stack --train-only: one job trains both seeds together; a later plain invocation only runs their MD."""
    toml = tiny_study(tmp_path, variants=("sake-no-spatial",))
    toml.write_text(toml.read_text().replace("seeds = [0]", "seeds = [0, 1]")
                    .replace('recipe = "budget"', 'recipe = "budget"\ncompile = false'))
    result = invoke(toml, "--stack", "--train-only", "--precompile", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "compiling the training steps of 1 group(s) side by side" in result.output
    assert "start 2 runs together: ethanol/sake-no-spatial/seed0, ethanol/sake-no-spatial/seed1" in result.output
    study = load_study(toml)
    curves = []
    for run in study.select():
        record = json.loads(study.record_path(run, "train").read_text())
        assert record["cost"]["trained_together"] == 2 and record["cost"]["epochs"] == 2
        assert record["test"]["frames"] == 8
        curves.append([row["val_force_mae_meV_A"] for row in record["validation_curve"]])
        assert not study.record_path(run, "md").exists()
    assert curves[0] != curves[1]  # two seeds: their own splits and initialisations
    result = invoke(toml, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "2 runs selected, 0 done, 2 to run (0 to train)" in result.output
    assert all(study.record_path(r, "md").exists() for r in study.select())
    # both seeds simulated: the committee of the two along every trajectory (issue 12)
    assert "committee of ethanol/sake-no-spatial along its MD frames" in result.output
    record = json.loads((study.records / "ethanol" / "sake-no-spatial" / "committee.json").read_text())
    assert len(record["trajectories"]) == 10 and record["test"]["frames"] == 8
    t = record["trajectories"][7]
    frames = np.load(study.run_dir(Run("ethanol", "sake-no-spatial", t["seed"])) / "md_frames.npz")
    calc = CommitteeCalculator([str(study.run_dir(r) / "train" / "best.pt") for r in study.select()])
    atoms = [Atoms(numbers=frames["numbers"], positions=x) for x in frames["positions"][:, t["replica"]]]
    direct = [o["forces_std_max"] for o in calc.predict(atoms)]
    kept = len(t["deviation_eV_A"])  # a collapsed trajectory: frames up to its collapse
    until = np.inf if t["collapse_ps"] is None else t["collapse_ps"] + 1e-9
    assert kept == int(np.sum(frames["time_ps"] <= until))
    np.testing.assert_allclose(t["deviation_eV_A"], direct[:kept], rtol=1e-4)
    assert t["times_ps"] == pytest.approx(list(frames["time_ps"][:kept]))
    assert "### Committee early warning" in (study.out / "README.md").read_text()


def test_committee_table_counts_warnings_leads_and_false_alarms():
    """Three collapsed trajectories (warned 0.5 ps ahead, warned only at the collapse frame, never) and two
    stable ones (one crossing): the table says 1/3 warned, lead 0.5 ps, 1/2 false alarms."""
    from sake_md.study.committee_md import summarize_cell
    from sake_md.study.report import Records, committee_section

    def traj(collapse, lead, crossing):
        return {"collapse_ps": collapse, "lead_ps": {"test max": lead}, "first_crossing_ps": {"test max": crossing},
                "deviation_eV_A": [0.1, 0.2, 0.3] if collapse else [0.1, 0.1]}

    record = {"molecule": "ethanol", "variant": "sake", "thresholds_eV_A": {"test max": 1.0},
              "test": {"p99_eV_A": 0.5, "max_eV_A": 1.0},
              "trajectories": [traj(2.0, 0.5, 1.5), traj(3.0, 0.0, 3.0), traj(4.0, None, None),
                               traj(None, None, 7.0), traj(None, None, None)]}
    cell = summarize_cell(record)
    assert cell["collapsed"] == 3 and cell["stable"] == 2
    assert cell["by_threshold"]["test max"] == {"warned": 1, "median_lead_ps": 0.5, "false_alarms": 1}
    records = Records({"variants": ["sake"]}, [{"run": {"molecule": "ethanol", "variant": "sake"}}], [], [record])
    row = table_row("\n".join(committee_section(records, "ethanol")), "Committee early warning", "sake")
    assert cell["usual_eV_A"] == 0.1 and cell["frame_before_collapse_eV_A"] == 0.2
    assert row == "| `sake` | 0.500 / 1.000 | 5 | 3 | 0.100 / 0.200 | 1/3 | 0.50 | 1/2 |"


def test_the_published_study_records_match_its_study_file():
    """The records were made with recipe "budget" (the CPU recipe's first name) and compile true; the study file
    now says "cpu" and the recipe compiles where it pays: neither makes a record stale."""
    from pathlib import Path

    from sake_md.study import _warn_stale

    study = load_study(Path(__file__).parents[1] / "md_runs" / "ablation" / "study.toml")
    warnings = []
    _warn_stale(study, study.select(), "cpu", warnings.append)
    assert warnings == []
