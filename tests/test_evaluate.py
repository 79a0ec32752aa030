"""Evaluation numbers against a direct numpy computation, bootstrap intervals, outputs and the CLI."""

import json

import ase.io
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sake_md.calculator import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.cli import main
from sake_md.data import read_dataset
from sake_md.evaluate import evaluate, format_report, paired_statistics, statistics
from sake_md.model import ModelConfig, SAKEPotential, count_parameters
from sake_md.spatial import SPATIAL_BLOCKS

from .test_data import emt_frames, write_npz


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained small potential (normalised to the data) and an EMT test file with mixed sizes."""
    folder = tmp_path_factory.mktemp("eval")
    frames = emt_frames(6, seed=5) + emt_frames(4, seed=6, molecule="CH3OH")
    data = folder / "test.extxyz"
    ase.io.write(data, frames, format="extxyz")
    energies = np.array([a.get_potential_energy() for a in frames])
    torch.manual_seed(0)
    potential = SAKEPotential([1, 6, 8], ModelConfig(hidden=16, heads=2, layers=2, radial=16),
                              energy_scale=float(energies.std()), energy_shift=float(energies.mean()))
    ckpt = save_checkpoint(folder / "model.pt", potential)
    return ckpt, data, frames


def test_errors_equal_a_direct_numpy_computation(setup):
    ckpt, data, _ = setup
    report = evaluate(ckpt, data, batch_size=4)
    ref = read_dataset(data)
    pred = SAKECalculator(ckpt).predict(ref.to_atoms(), batch_size=3)
    de = np.array([p["energy"] for p in pred]) - ref.energy
    df = np.concatenate([(p["forces"] - f).ravel() for p, f in zip(pred, ref.forces, strict=True)])
    n = np.array([len(z) for z in ref.numbers])
    expected = {"energy_mae_meV": np.abs(de).mean(), "energy_rmse_meV": np.sqrt((de ** 2).mean()),
                "energy_mae_meV_per_atom": np.abs(de / n).mean(),
                "energy_rmse_meV_per_atom": np.sqrt(((de / n) ** 2).mean()),
                "force_mae_meV_A": np.abs(df).mean(), "force_rmse_meV_A": np.sqrt((df ** 2).mean())}
    for name, value in expected.items():
        assert report[name]["value"] == pytest.approx(1e3 * value, rel=1e-6), name
        lo, hi = report[name]["ci95"]
        assert lo <= report[name]["value"] <= hi and lo < hi
    potential = SAKECalculator(ckpt).potential
    assert report["frames"] == 10 and report["variant"] == "sake"
    assert report["parameters"] == count_parameters(potential)
    assert "force_mae_meV_A" in format_report(report)


def test_bootstrap_interval_is_over_frames():
    same = {"abs_e": np.full(50, 0.002), "sq_e": np.full(50, 4e-6), "abs_e_atom": np.full(50, 2e-4),
            "sq_e_atom": np.full(50, 4e-8), "abs_f": np.full(50, 0.3), "sq_f": np.full(50, 0.02),
            "n_f": np.full(50, 27.0), "one": np.ones(50)}
    s = statistics(same, n_bootstrap=200)
    assert s["energy_mae_meV"] == {"value": pytest.approx(2.0), "ci95": [pytest.approx(2.0), pytest.approx(2.0)]}
    spread = dict(same, abs_e=np.linspace(0, 0.004, 50))
    lo, hi = statistics(spread, n_bootstrap=500)["energy_mae_meV"]["ci95"]
    assert 1.5 < lo < 2.0 < hi < 2.5  # mean 2 meV, standard error about 0.17 meV


def test_paired_difference_is_the_difference_with_an_interval_over_the_same_frames():
    rng = np.random.default_rng(1)
    hard = rng.exponential(0.002, 200)  # per-frame errors: some frames are hard for any potential
    terms = lambda abs_e: {"abs_e": abs_e, "sq_e": abs_e ** 2, "abs_e_atom": abs_e / 9, "sq_e_atom": (abs_e / 9) ** 2,  # noqa: E731
                           "abs_f": 27 * abs_e, "sq_f": 27 * abs_e ** 2, "n_f": np.full(len(abs_e), 27.0),
                           "one": np.ones(len(abs_e))}
    a, b = terms(hard + 0.0002), terms(hard)  # a is worse by 0.2 meV on every frame
    paired = paired_statistics(a, b, n_bootstrap=500)
    separate = statistics(a, n_bootstrap=500)["energy_mae_meV"], statistics(b, n_bootstrap=500)["energy_mae_meV"]
    assert paired["energy_mae_meV"]["value"] == pytest.approx(separate[0]["value"] - separate[1]["value"])
    assert paired["energy_mae_meV"]["other"] == pytest.approx(separate[1]["value"])
    assert paired["energy_mae_meV"]["ci95"] == [pytest.approx(0.2), pytest.approx(0.2)]  # the shared part cancels
    assert separate[0]["ci95"][0] < separate[1]["ci95"][1]  # while the separate intervals overlap
    itself = paired_statistics(b, b, n_bootstrap=50)
    assert all(v["value"] == 0 and v["ci95"] == [0, 0] for v in itself.values())
    with pytest.raises(ValueError, match="same frames"):
        paired_statistics(a, terms(hard[:100]))


def test_eval_against_another_checkpoint(setup, tmp_path):
    ckpt, data, _ = setup
    potential = SAKECalculator(ckpt).potential
    with torch.no_grad():
        potential.energy_shift += 0.01  # 10 meV higher on every frame
    other = save_checkpoint(tmp_path / "shifted.pt", potential)
    report = evaluate(other, data, batch_size=4, against=ckpt)
    alone = evaluate(ckpt, data, batch_size=4)
    paired = report["against"]
    assert paired["checkpoint"] == str(ckpt)
    assert paired["force_mae_meV_A"]["value"] == pytest.approx(0, abs=1e-6)  # forces do not see the shift
    assert paired["energy_mae_meV"]["other"] == pytest.approx(alone["energy_mae_meV"]["value"], rel=1e-6)
    assert paired["energy_mae_meV"]["value"] == pytest.approx(
        report["energy_mae_meV"]["value"] - alone["energy_mae_meV"]["value"], rel=1e-6)
    result = CliRunner().invoke(main, ["eval", str(other), "--data", str(data), "--against", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert f"against     {ckpt} (the same frames)" in result.output and "paired 95% interval" in result.output
    result = CliRunner().invoke(main, ["eval", str(other), str(ckpt), "--data", str(data), "--against", str(ckpt)])
    assert result.exit_code == 2 and "give one CHECKPOINT" in result.output


def test_eval_command_writes_json_extxyz_and_plot(setup, tmp_path):
    ckpt, data, frames = setup
    xyz, png = tmp_path / "pred.extxyz", tmp_path / "parity.png"
    result = CliRunner().invoke(main, ["eval", str(ckpt), "--data", str(data), "--json", "--extxyz", str(xyz),
                                       "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["frames"] == 10 and set(report["force_mae_meV_A"]) == {"value", "ci95"}
    written = ase.io.read(xyz, index=":")
    pred = SAKECalculator(ckpt).predict(frames)
    assert written[7].info["ref_energy"] == pytest.approx(frames[7].get_potential_energy(), rel=1e-7)
    assert written[7].info["pred_energy"] == pytest.approx(pred[7]["energy"], rel=1e-7)
    np.testing.assert_allclose(written[2].arrays["pred_forces"], pred[2]["forces"], rtol=1e-6, atol=1e-7)
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_bad_data_without_a_traceback(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, R=np.zeros((2, 3, 3)))
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--out", str(tmp_path / "o"), "--epochs", "1"])
    assert result.exit_code == 1 and "missing keys" in result.output and "found: R" in result.output
    assert "Traceback" not in result.output


def test_train_model_choices_come_from_the_variant_registry():
    (option,) = [p for p in main.commands["train"].params if p.name == "variant"]
    assert list(option.type.choices) == list(SPATIAL_BLOCKS)


def test_eval_npz_in_kcal_per_mol(setup, tmp_path):
    ckpt, _, frames = setup
    npz = write_npz(tmp_path / "ethanol.npz", frames[:6])
    as_npz = evaluate(ckpt, npz)
    as_xyz_path = tmp_path / "ethanol.extxyz"
    ase.io.write(as_xyz_path, frames[:6], format="extxyz")
    as_xyz = evaluate(ckpt, as_xyz_path)
    assert as_npz["force_mae_meV_A"]["value"] == pytest.approx(as_xyz["force_mae_meV_A"]["value"], rel=1e-5)
