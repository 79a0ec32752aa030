"""The study's statistics (sake_md.study.stats) on hand-computed examples, the report's use of them (paired
comparisons, no test for one model per variant, cost labels), and the equal-cost arm: its definition, sizing
and a tiny arm end to end in a records folder of its own."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sake_md.errors import ConfigError
from sake_md.study import load_study
from sake_md.study import stats as design
from sake_md.study.report import Records, _totals, load_records, render

from .test_study import fixture_records, invoke, table_row, tiny_study


# ---- statistics: known answers ---------------------------------------------------------------------------------
def test_sign_flip_p_enumerates_every_sign_pattern():
    # (1, 2, 3): sums over the 8 sign patterns are ±6, ±4, ±2, 0, 0; |sum| >= 6 for 2 of them
    assert design.sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # (1, -2, 3): observed |2|; |sums| 6, 4, 2, 0, 0, 2, 4, 6: 6 of 8 at least 2
    assert design.sign_flip_p([1.0, -2.0, 3.0]) == 0.75
    assert design.sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0625
    assert design.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert (design.min_sign_flip_p(3), design.min_sign_flip_p(5)) == (0.25, 0.0625)
    with pytest.raises(ValueError):
        design.sign_flip_p([])


def test_paired_effect_pairs_by_seed_with_a_t_interval():
    e = design.paired_effect([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # differences 2, 3, 4: mean 3, s = 1
    assert list(e.diffs) == [2.0, 3.0, 4.0] and e.mean == 3.0 and (e.p, e.min_p) == (0.25, 0.25)
    half = 4.302653 / math.sqrt(3)
    assert (e.lo, e.hi) == (pytest.approx(3 - half, rel=1e-6), pytest.approx(3 + half, rel=1e-6))
    one = design.paired_effect([3.0], [1.0])
    assert one.n == 1 and one.mean == 2.0 and one.p is None and math.isnan(one.lo)
    with pytest.raises(ValueError):
        design.paired_effect([1.0, 2.0], [1.0])


def test_holm_on_a_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert design.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = design.holm([0.01, None, 0.04])  # a cell without a test is not in the family
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert design.holm([0.25] * 18) == [1.0] * 18  # the equal-epochs arm: 3 seeds, 18 tests


def test_kaplan_meier_with_censoring_by_hand():
    # 6 runs; collapses at 1, 2, 3; censored (intact) at 2, 4, 5
    t, s = design.kaplan_meier([1, 2, 2, 3, 4, 5], [True, True, False, True, False, False])
    assert list(t) == [1.0, 2.0, 3.0]
    # 5/6; then 5 at risk at t = 2 (the run censored at 2 counts): × 4/5; then 3 at risk: × 2/3
    assert s == pytest.approx([5 / 6, 2 / 3, 4 / 9])
    assert design.km_median(t, s) == 3.0 and design.km_survival_at(t, s, 4.5) == pytest.approx(4 / 9)
    assert design.km_survival_at(t, s, 0.5) == 1.0
    t, s = design.kaplan_meier([10.0] * 5, [False] * 5)  # every run intact: no drop, median beyond the run
    assert len(t) == 0 and design.km_median(t, s) is None and design.km_survival_at(t, s, 10.0) == 1.0
    # the naive mean of the 50 ps ethanol `sake` runs is not KM's median: KM at 26.5 ps drops to 0.4
    t, s = design.kaplan_meier([50.0, 2.15, 3.8, 26.5, 33.15], [False, True, True, True, True])
    assert design.km_median(t, s) == 26.5


def test_sign_test_and_paired_stability():
    assert design.sign_test_p(5, 0) == pytest.approx(0.0625) and design.sign_test_p(2, 2) == 1.0
    assert design.sign_test_p(0, 0) is None
    a = np.array([[10.0, 10.0, 4.0], [10.0, 2.0, 10.0]])  # (seeds, start frames)
    b = np.array([[10.0, 5.0, 10.0], [3.0, 2.0, 10.0]])
    f = design.paired_stability(a, b)
    assert (f.wins, f.losses, f.ties) == (2, 1, 3)
    assert list(f.effect.diffs) == pytest.approx([8 / 3 - 3, 7 / 3]) and f.effect.p == 1.0  # 2 seeds: min p 1
    with pytest.raises(ValueError):
        design.paired_stability(a, b[:, :2])


def test_within_correlation_removes_between_group_differences():
    # within each group y falls with x, but the group with the larger x has the larger y
    x = np.array([1.0, 2.0, 3.0, 11.0, 12.0, 13.5])
    y = np.array([3.0, 2.5, 1.0, 13.0, 12.5, 10.0])
    groups = ["a", "a", "a", "b", "b", "b"]
    assert stats.pearsonr(x, y)[0] > 0.9
    w = design.within_correlation(x, y, groups)
    dx = x - np.repeat([2.0, 36.5 / 3], 3)
    dy = y - np.repeat([6.5 / 3, 35.5 / 3], 3)
    r = stats.pearsonr(dx, dy)[0]
    assert w.r == pytest.approx(r) and w.r < -0.9 and (w.df, w.n, w.groups) == (3, 6, 2)
    t = r * math.sqrt(3 / (1 - r * r))
    assert w.p == pytest.approx(2 * stats.t.sf(abs(t), 3))
    assert design.within_correlation([1.0, 2.0], [1.0, 2.0], ["a", "b"]) is None  # one model per group


# ---- the report's use of them ------------------------------------------------------------------------------------
def test_one_model_per_variant_gets_no_p_values(tmp_path):
    records = fixture_records(tmp_path)
    for path in records.rglob("seed[12].*.json"):
        path.unlink()
    text = render(load_records(records))
    row = table_row(text, "## Findings", "sake-no-spatial")
    assert "one model per variant: no test" in row and "p =" not in row and "Holm" not in row
    assert "Holm's adjustment over all 0 per-molecule tests" in text


def test_cost_labels_keep_long_runs_out_and_take_medians(tmp_path):
    records = fixture_records(tmp_path)
    for seed, steps in enumerate((10.0, 20.0, 60.0)):  # median 20, mean 30
        path = records / "ethanol" / "sake" / f"seed{seed}.md.json"
        md = json.loads(path.read_text())
        md["horizons"]["1"]["steps_per_s"] = steps
        if seed == 0:  # this model also ran 5 ps: its cost covers both and stays out of the 1 ps column
            md["horizons"]["5"] = md["horizons"]["1"]
            md["cost"]["cpu_s"] = 7200.0
        path.write_text(json.dumps(md))
    text = render(load_records(records))
    row = table_row(text, "### Cost", "sake")
    assert "| 20.0 | 0.50 |" in row
    assert "MD CPU-h per model (1 ps runs only)" in text and "`sake` seed 0 (5 ps) 2.00" in text


def two_molecule_records(tmp_path) -> Path:
    """The fixture's ethanol records copied to malonaldehyde with every error of both cells doubled (the same
    relative differences), and to aspirin (optional) with `sake`'s ×10 (`sake-no-spatial` better there)."""
    records = fixture_records(tmp_path)
    study = json.loads((records / "study.json").read_text())
    # malonaldehyde: every error doubled; aspirin (optional): sake's ×10, so that no-spatial is better there
    for molecule, optional, scale in (("malonaldehyde", False, {"sake": 2.0, "sake-no-spatial": 2.0}),
                                      ("aspirin", True, {"sake": 10.0, "sake-no-spatial": 1.0})):
        study["molecules"][molecule] = dict(study["molecules"]["ethanol"], optional=optional)
        for path in (records / "ethanol").rglob("*.train.json"):
            train = json.loads(path.read_text())
            train["run"]["molecule"] = molecule
            for q in train["test"].values():
                if isinstance(q, dict):
                    q["value"] *= scale[path.parent.name]
            target = records / molecule / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(train))
    (records / "study.json").write_text(json.dumps(study))
    return records


def test_primary_test_pools_the_required_molecules_by_relative_difference(tmp_path):
    text = render(load_records(two_molecule_records(tmp_path)))
    section = text.split("### Primary test", 1)[1].split("### Secondary", 1)[0]
    row = table_row(section, "|---|", "sake-no-spatial")
    # ethanol and malonaldehyde alike: +10 / (10, 12, 14) twice (scaling both cells keeps the ratio); aspirin,
    # optional, left out: 6 positive pairs, exact p = 2 / 2^6, one variant so Holm keeps it
    rel = [10 / f for f in (10.0, 12.0, 14.0)] * 2
    assert "| 6 (ethanol, malonaldehyde) |" in row and f"{100 * np.mean(rel):+.1f}%" in row
    assert "| 0.0312 (0.0312) | 0.0312 **< 0.05** |" in row
    assert "per-molecule tests below are secondary" in section


def test_secondary_tests_pool_the_other_errors_with_holm_over_all_of_them(tmp_path):
    records = load_records(two_molecule_records(tmp_path))
    section = render(records).split("### Secondary tests", 1)[1].split("### ethanol", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `sake-no-spatial`")]
    # the three errors other than the primary (force RMSE), each as the primary: 6 of 6 pairs above `sake`,
    # exact p 2 / 2^6 = 0.03125; Holm over the 3 tests together: 3 × 0.03125 = 0.094 for each
    assert [r.split(" | ")[1] for r in rows] == ["energy RMSE (meV)", "energy MAE (meV)", "force MAE (meV/Å)"]
    assert all("| 0 of 6 | 0.0312 (0.0312) | 0.0938 |" in r for r in rows)
    # tails: each model's force RMSE / MAE, its range over seeds per molecule (doubling both keeps the ratio)
    ratios = [r["test"]["force_rmse_meV_A"]["value"] / r["test"]["force_mae_meV_A"]["value"]
              for r in records.trained("ethanol", "sake")]
    for molecule in ("ethanol", "malonaldehyde"):
        assert f"- {molecule}: `sake` {min(ratios):.2f}–{max(ratios):.2f}," in section


def test_cost_table_gives_the_compile_time_inside_the_training_budget(tmp_path):
    records = fixture_records(tmp_path)
    for seed, first in enumerate((250.0, 310.0, 40.0)):  # seed 2: torch's cache, a short compile
        path = records / "ethanol" / "sake" / f"seed{seed}.train.json"
        train = json.loads(path.read_text())
        # the compile in epoch 1; a later slow epoch (a resume, a busy core) is not counted
        seconds = [first, 10.0, 10.0, 10.0, 19.0, 130.0 if seed == 0 else 10.0, 10.0]  # median 10
        train["validation_curve"] = [{"epoch": k + 1, "seconds": t} for k, t in enumerate(seconds)]
        path.write_text(json.dumps(train))
    text = render(load_records(records))
    # per seed (250 - 10) / 60 = 4.0, (310 - 10) / 60 = 5.0, (40 - 10) / 60 = 0.5: median 4.0
    assert "of which compiling the step (min; median)" in text
    assert "| 1.00 | 4.0 |" in table_row(text, "### Cost", "sake")
    assert "| — |" in table_row(text, "### Cost", "sake-no-spatial")  # no epoch times recorded


def test_totals_include_the_committee_analyses_or_say_they_are_not_recorded(tmp_path):
    records = load_records(fixture_records(tmp_path))
    with_cost = Records(records.study, records.train, records.md, [{"cost": {"cpu_s": 360.0}}])
    assert "9.10 CPU-hours recorded: training 6.00 (6 models), MD 3.00 (6 models), committee analyses 0.10 " \
           "(1 cells)" in "\n".join(_totals(with_cost))
    without = Records(records.study, records.train, records.md, [{"kind": "committee"}])
    assert "9.00 CPU-hours recorded" in "\n".join(_totals(without))
    assert "committee analyses not recorded" in "\n".join(_totals(without))


def test_correlation_is_given_within_variants_as_well_as_across(tmp_path):
    text = render(load_records(fixture_records(tmp_path)))
    line = next(s for s in text.splitlines() if s.startswith("- force error vs stability"))
    # force RMSE centred per variant: -2, 0, 2 in both; stability centred: 0 for sake, 1/12, 1/12, -1/6 for
    # sake-no-spatial (seed 2, the highest error, the least stable): r = -0.5 / √(16 · 1/24) = -0.61
    assert "5 of 6 at the ceiling" in line and "within variants (each centred on its variant's mean, 2 variants, " \
           f"df = 3) r = {-0.5 / math.sqrt(16 / 24):.2f}" in line
    assert "`sake` — (n = 3, no variation)" in line and "`sake-no-spatial` -0.87 (n = 3)" in line


# ---- the equal-cost arm ------------------------------------------------------------------------------------------
ARM = """
[arms.equal-cost]
out = "cost"
seeds = [0, 1]
time_budget_minutes = 0.05
md_time_ps = 0.1
"""


def arm_study(folder, variants=("sake-no-spatial",)):
    toml = tiny_study(folder, variants)
    toml.write_text(toml.read_text() + ARM)
    return toml


def test_arm_definition_budget_seeds_md_and_its_own_records(tmp_path):
    toml = arm_study(tmp_path)
    default = load_study(toml)
    assert (default.arm, default.arm_option, default.molecules["ethanol"].epochs) == ("equal-epochs", False, 2)
    assert load_study(toml, arm="equal-epochs").out == default.out == tmp_path / "study"
    study = load_study(toml, arm="equal-cost")
    m = study.molecules["ethanol"]
    assert (study.arm, study.arm_option, m.epochs, m.time_budget_s, m.seeds) == ("equal-cost", True, None, 3.0,
                                                                                 (0, 1))
    assert study.md["time_ps"] == 0.1 and m.long_md_ps is None and study.out == tmp_path / "cost"
    run = study.select()[0]
    cfg = study.train_config(run)
    assert (cfg.time_budget, cfg.epochs, cfg.recipe) == (3.0, None, "cpu")
    assert study.md_horizons(run) == [0.1]
    d = study.to_dict()
    assert d["arm"] == "equal-cost" and d["molecules"]["ethanol"]["time_budget_s"] == 3.0
    with pytest.raises(ConfigError, match="no arm 'equal-time'"):
        load_study(toml, arm="equal-time")
    text = toml.read_text()
    for out in ("", 'out = "study"\n'):  # none, or the default arm's: the arms' records would mix
        toml.write_text(text.replace('out = "cost"\n', out))
        with pytest.raises(ConfigError, match="out folder of its own"):
            load_study(toml, arm="equal-cost")
    toml.write_text(text.replace("md_time_ps", "md_time"))
    with pytest.raises(ConfigError, match="unknown key"):
        load_study(toml, arm="equal-cost")


def test_arm_dry_run_states_runs_and_training_hours(tmp_path):
    toml = arm_study(tmp_path, variants=("sake", "sake-no-spatial"))
    result = invoke(toml, "--arm", "equal-cost", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 runs selected, 0 done, 4 to run" in result.output and "ethanol/sake/seed1" in result.output
    assert "training: 0.0 CPU-hours for 4 run(s) with a time budget" in result.output
    assert not (tmp_path / "cost").exists()


def test_tiny_equal_cost_arm_end_to_end(tmp_path):
    toml = arm_study(tmp_path)
    result = invoke(toml, "--arm", "equal-cost", "--jobs", "2")
    assert result.exit_code == 0, result.output
    study = load_study(toml, arm="equal-cost")
    for seed in (0, 1):
        train = json.loads((study.records / "ethanol" / "sake-no-spatial" / f"seed{seed}.train.json").read_text())
        assert train["config"]["time_budget"] == 3.0 and train["config"]["epochs"] is None
        md = json.loads((study.records / "ethanol" / "sake-no-spatial" / f"seed{seed}.md.json").read_text())
        assert set(md["horizons"]) == {"0.1"}
    assert json.loads((study.records / "study.json").read_text())["arm"] == "equal-cost"
    assert not (tmp_path / "study").exists()  # the default arm's folder: untouched
    readme = (tmp_path / "cost" / "README.md").read_text()
    assert "Arm: equal-cost." in readme and "a training budget of 0.05 min per model" in readme
    assert "--arm equal-cost --report-only" in readme and "### Learning" in readme
    assert (tmp_path / "cost" / "learning.png").exists()


def test_arm_sizing_uses_the_budget_not_epochs(tmp_path):
    from sake_md.md.stability import PRESETS
    from sake_md.study.sizing import Speed, sizing_table

    study = load_study(arm_study(tmp_path), arm="equal-cost")
    text = sizing_table(study, [Speed("ethanol", "sake-no-spatial", 0.5, 100.0)])
    row = next(line for line in text.splitlines() if line.startswith("ethanol"))
    md_h = PRESETS["mdsim-md17"].steps(0.1) / 100.0 / 3600
    assert row.split()[4:] == ["6", f"{3 / 3600:.2f}", f"{md_h:.2f}", "2"]  # 3 s / 0.5 s per epoch = 6 epochs
    assert f"total: {2 * (3 / 3600 + md_h):.1f} CPU-hours" in text and "suggested epochs" not in text


BOUGHT = """
[arms.equal-cost.budget_epochs]
ethanol = { sake-no-spatial = 3 }
"""


def test_budget_epochs_replace_the_clock_and_are_checked(tmp_path):
    toml = arm_study(tmp_path)
    toml.write_text(toml.read_text() + BOUGHT)
    study = load_study(toml, arm="equal-cost")
    run = study.select()[0]
    cfg = study.train_config(run)
    assert (cfg.epochs, cfg.time_budget) == (3, None)  # the epochs the budget bought, not the clock
    assert study.molecules["ethanol"].time_budget_s == 3.0  # the budget they stand for
    assert study.to_dict()["molecules"]["ethanol"]["budget_epochs"] == {"sake-no-spatial": 3}
    assert study.same_budget({"time_budget": 3.0, "epochs": None}, run)  # a record on the clock: the same budget
    assert not study.same_budget({"time_budget": 6.0, "epochs": None}, run)
    text = toml.read_text()
    for bad, match in (("{ sake-no-spatial = 0 }", "positive integer"), ("{ sake = 3 }", "every variant"),
                       ("{ sake-no-spatial = 2.5 }", "positive integer")):
        toml.write_text(text.replace("{ sake-no-spatial = 3 }", bad))
        with pytest.raises(ConfigError, match=match):
            load_study(toml, arm="equal-cost")
    toml.write_text(text.replace("ethanol = {", "malonaldehyde = {"))
    with pytest.raises(ConfigError, match="no epochs for ethanol"):
        load_study(toml, arm="equal-cost")


def test_arm_sizing_takes_the_bought_epochs_at_the_measured_speed(tmp_path):
    from sake_md.study.sizing import Speed, sizing_table

    toml = arm_study(tmp_path)
    toml.write_text(toml.read_text() + BOUGHT)
    text = sizing_table(load_study(toml, arm="equal-cost"), [Speed("ethanol", "sake-no-spatial", 2.0, 100.0)])
    row = next(line for line in text.splitlines() if line.startswith("ethanol"))
    assert row.split()[4:6] == ["3", f"{3 * 2.0 / 3600:.2f}"]  # 3 epochs of 2 s, whatever the clock would give


def test_budget_epochs_take_over_from_the_clock_without_redoing_its_records(tmp_path):
    toml = arm_study(tmp_path)
    result = invoke(toml, "--arm", "equal-cost", "--seed", "0")
    assert result.exit_code == 0, result.output
    toml.write_text(toml.read_text() + BOUGHT)
    result = invoke(toml, "--arm", "equal-cost")
    assert result.exit_code == 0, result.output
    assert "1 done, 1 to run" in result.output and "recorded with other" not in result.output
    records = load_study(toml, arm="equal-cost").records / "ethanol" / "sake-no-spatial"
    clock, bought = (json.loads((records / f"seed{s}.train.json").read_text()) for s in (0, 1))
    assert (clock["config"]["time_budget"], clock["config"]["epochs"]) == (3.0, None)
    assert (bought["config"]["time_budget"], bought["config"]["epochs"], bought["cost"]["epochs"]) == (None, 3, 3)
    readme = (tmp_path / "cost" / "README.md").read_text()
    assert "or the epochs it bought on the reference machine for runs trained since they were stated: " \
           "`sake-no-spatial` 3" in readme
    assert "Training length: 1 model(s) on the clock (the time budget); 1 for the epochs the budget bought on the " \
           "reference machine: `sake-no-spatial` seed 1 (3)." in readme
