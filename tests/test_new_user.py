"""What a new user met when trying the README (issue 19): each was a traceback, a silent surprise or a failing
command; each is a test here. Tiny data from ASE's EMT; no rMD17 needed."""

import time

import ase.io
import numpy as np
from click.testing import CliRunner

from sake_md.checkpoint import read_checkpoint
from sake_md.cli import main

from .test_data import emt_frames, write_npz

TINY = ["--hidden", "8", "--heads", "2", "--layers", "1", "--radial", "8", "--valid", "2", "--batch-size", "4",
        "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_periodic_training_with_a_time_budget_trains_eagerly_and_says_so(tmp_path):
    """README: `sake-md train --data cu.extxyz --cutoff 5.0 --time-budget 30m` failed ("--compile trains dense
    models"): the recipe's compile setting is "auto", which never compiles a sparse model."""
    from .test_periodic import emt_copper_snapshots

    emt_copper_snapshots(tmp_path / "cu.extxyz")
    result = invoke("train", "--data", tmp_path / "cu.extxyz", "--out", tmp_path / "cu", "--cutoff", "4.0",
                    "--time-budget", "3s", *TINY)
    assert result.exit_code == 0, result.output
    assert "compile=auto: a sparse (--cutoff) model has no compiled training step -> eager" in result.output
    assert (tmp_path / "cu" / "best.pt").exists()


def test_a_short_budget_is_not_spent_compiling_and_says_it_is_too_short(tmp_path):
    """`--time-budget 15s` ran 3.5 minutes (the compile ran inside the first epoch), and a 2-minute budget gave an
    untrained model without a word. Here the MD17-sized model (6 layers, hidden 64) with a 2 s budget."""
    data = write_npz(tmp_path / "emt.npz", emt_frames(12, seed=1))
    start = time.perf_counter()
    result = invoke("train", "--data", data, "--out", tmp_path / "r", "--time-budget", "2s", "--valid", "2",
                    "--no-progress", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 90  # a compile alone takes minutes
    assert "-> eager training step" in result.output and "compiled the training step" not in result.output
    assert "recipe cpu: a time budget of 2 s" in result.output  # the planned length, stated at the start
    assert "fits only about" in result.output and "--time-budget" in result.output


def test_a_first_step_that_compiles_does_not_make_the_budget_look_too_short(tmp_path, monkeypatch):
    """The compiled step compiles on its first call (minutes): a 30-minute budget was said to fit "1 epoch of
    20401 s" (the compile counted as 1/3 of the first three steps). Here the first step sleeps 2 s instead."""
    from sake_md.train import Trainer

    eager, calls = Trainer.eager_step, []

    def compiles_first(self, lb, cfg):
        if not calls:
            time.sleep(2.0)
        calls.append(1)
        return eager(self, lb, cfg)

    monkeypatch.setattr(Trainer, "eager_step", compiles_first)
    data = write_npz(tmp_path / "emt.npz", emt_frames(30, seed=4))
    result = invoke("train", "--data", data, "--out", tmp_path / "r", "--time-budget", "5s", "--recipe", "cpu",
                    "--no-compile", *TINY)
    assert result.exit_code == 0, result.output
    # 7 steps an epoch; the compile counted into the plan allowed at most 2 epochs. Many more fit the 3 s left on
    # any machine (20 on a quiet one, 15 on a slow one with both cores busy), so the bound leaves room for speed
    assert len(calls) > 7 * 6 and "fits only about" not in result.output


def test_plain_train_uses_the_cpu_recipe_not_the_papers_5000_epochs(monkeypatch):
    import sake_md.train
    from sake_md.train import RECIPES

    seen = []
    monkeypatch.setattr(sake_md.train, "train", lambda cfg, resume=False: seen.append(cfg) or "best.pt")
    assert invoke("train", "--data", "d.npz", "--out", "o").exit_code == 0
    cfg = seen[0]
    assert cfg.recipe == "cpu" and cfg.epochs is None and cfg.time_budget == RECIPES["cpu"]["time_budget"]
    assert cfg.compile == "auto"
    assert "Default: cpu." in " ".join(invoke("train", "--help").output.split())


def test_train_prints_the_test_errors_and_a_finished_resume_says_so(tmp_path):
    data = write_npz(tmp_path / "emt.npz", emt_frames(10, seed=2))
    test = write_npz(tmp_path / "test.npz", emt_frames(4, seed=3))
    args = ["train", "--data", data, "--test", test, "--out", tmp_path / "r", "--epochs", "1", *TINY]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "test errors of best.pt" in result.output and "force_mae_meV_A" in result.output
    assert "recipe cpu: 1 epochs" in result.output
    before = (tmp_path / "r" / "best.pt").read_bytes()
    again = invoke("train", "--out", tmp_path / "r", "--data", data, "--resume", "--no-progress")
    assert again.exit_code == 0, again.output
    assert "nothing to do: the run in" in again.output
    assert (tmp_path / "r" / "best.pt").read_bytes() == before  # not finalised twice


def test_one_line_errors_instead_of_tracebacks(tmp_path):
    import torch

    data = write_npz(tmp_path / "emt.npz", emt_frames(6, seed=1))
    result = invoke("train", "--model", "sake-sh", "--model-option", "lmax=0", "--data", data, "--out",
                    tmp_path / "r", "--epochs", "1", *TINY)
    assert result.exit_code == 1 and "Error: sake-sh needs an integer lmax >= 1" in result.output
    assert "Traceback" not in result.output
    if not torch.cuda.is_available():
        result = invoke("run", "--device", "cuda", "--steps", "2", "--traj", tmp_path / "t.extxyz", "--log",
                        tmp_path / "t.log", "--no-progress")
        assert result.exit_code == 1 and "Error: device 'cuda' was requested" in result.output
        assert "Traceback" not in result.output


def test_a_corrupt_npz_is_named_in_one_line(tmp_path, npz):
    bad = tmp_path / "b.npz"
    bad.write_bytes(npz.read_bytes()[:1000])  # as `head -c 1000 train.npz > b.npz`
    for args in (["train", "--data", bad, "--out", tmp_path / "r", "--epochs", "1", *TINY],
                 ["eval", "potentials/sake_ethanol.pt", "--data", bad]):
        result = invoke(*args)
        assert result.exit_code == 1 and f"Error: {bad} cannot be read as a numpy .npz file" in result.output
        assert "Traceback" not in result.output


def trained(tmp_path, molecule="CH3CH2OH"):
    data = write_npz(tmp_path / "train.npz", emt_frames(8, seed=4, molecule=molecule))
    result = invoke("train", "--data", data, "--out", tmp_path / "r", "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    return tmp_path / "r" / "best.pt"


def test_eval_and_compare_warn_once_on_frames_of_another_molecule(tmp_path):
    """An ethanol potential on another C/H/O molecule gave errors of 345,651 meV/atom without a word."""
    ckpt = trained(tmp_path)
    assert read_checkpoint(ckpt)["training"]["compositions"] == [[[1, 6], [6, 2], [8, 1]]]
    other = write_npz(tmp_path / "other.npz", emt_frames(4, seed=5, molecule="CH3OCH3"))  # dimethyl ether: C2H6O
    same = write_npz(tmp_path / "same.npz", emt_frames(4, seed=6))
    assert "warning" not in invoke("eval", ckpt, "--data", same).output
    # same composition, another molecule: not detectable from compositions; a different one is
    acetic = write_npz(tmp_path / "acetic.npz", emt_frames(4, seed=5, molecule="CH3COOH"))
    result = invoke("eval", ckpt, "--data", acetic)
    assert result.exit_code == 0 and result.output.count("warning") == 1 and "trained on C2H6O" in result.output
    result = invoke("compare", ckpt, "--reference", acetic, "--runs", "1", "--time", "1fs", "--no-progress",
                    "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert result.output.count("warning") == 1 and "trained on C2H6O" in result.output
    assert invoke("eval", ckpt, "--data", other).exit_code == 0


def test_eval_reports_energy_errors_of_a_file_without_forces(tmp_path):
    ckpt = trained(tmp_path)
    frames = emt_frames(5, seed=7)
    path = write_npz(tmp_path / "e.npz", frames)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "forces"}
    np.savez(tmp_path / "energies.npz", **arrays)
    assert "energy errors only" in invoke("eval", ckpt, "--data", tmp_path / "energies.npz").output
    result = invoke("eval", ckpt, "--data", tmp_path / "energies.npz", "--json")
    assert result.exit_code == 0, result.output
    assert "energy_mae_meV" in result.output and "force_mae_meV_A" not in result.output
    assert "energy errors only" in result.output
    full = invoke("eval", ckpt, "--data", path, "--json")
    assert '"energy_mae_meV"' in full.output and "force_mae_meV_A" in full.output


def test_compare_tells_two_best_pt_apart():
    from sake_md.md.compare import model_names

    assert model_names(["runs/a/best.pt", "runs/b/best.pt"]) == ["a/best", "b/best"]
    assert model_names(["x/a.pt", "y/b.pt"]) == ["a", "b"]


def test_help_summaries_are_whole_sentences():
    listing = invoke("--help").output
    assert "(after Fu et al." not in listing and "(e.g...." not in listing
    assert "MD stability of CHECKPOINTS (Fu et al. 2023)" in " ".join(listing.split())


def test_run_takes_a_structure_by_name_as_compile_does(tmp_path):
    from sake_md.structures import load_structure

    assert load_structure("ethanol").get_chemical_formula() == "C2H6O"
    result = invoke("run", "--structure", "ethanol", "--steps", "2", "--traj", tmp_path / "t.extxyz", "--log",
                    tmp_path / "t.log", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(ase.io.read(tmp_path / "t.extxyz", index=":")) >= 1


def test_md_outputs_of_a_run_in_a_checkout_are_ignored_by_git():
    from pathlib import Path

    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert "/md.extxyz" in ignored and "/md.log" in ignored
