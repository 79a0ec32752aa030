"""Training on a generated EMT fixture: loss goes down, checkpoints load, resume is exact, DDP = 1 process."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sake_md.checkpoint import load_checkpoint, read_checkpoint
from sake_md.cli_options import parse_duration
from sake_md.errors import DataError, SakeMDError
from sake_md.model import ModelConfig
from sake_md.predict import predict
from sake_md.train import PaperAdam, TrainConfig, energy_offset, learning_rate, load_split, train

SMALL = ModelConfig(hidden=16, heads=2, layers=2, radial=16).to_dict()


def small_config(data, out, **overrides):
    settings = dict(model=SMALL, n_valid=4, epochs=4, batch_size=4, lr=3e-3, warmup_fraction=0.0, decay_end=1.0,
                    dtype="float64", progress=False, energy_weight=0.1)
    settings.update(overrides)
    return TrainConfig(data=str(data), out=str(out), **settings)


class Killed(Exception):
    pass


def train_until_killed(cfg, epoch: int = 2) -> None:
    """Train ``cfg`` and kill the run after ``epoch`` (as a SIGKILL would: last.pt of that epoch stays)."""

    def kill(trainer, row):
        if row["epoch"] == epoch:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, on_epoch_end=kill)


def log_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_reduces_the_loss_and_writes_loadable_checkpoints(npz, tmp_path):
    out = tmp_path / "run"
    train(small_config(npz, out, epochs=6, batch_size=2, lr=1e-2, dtype="float32"))
    rows = log_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["train_force_mae_meV_A"] < 0.6 * rows[0]["train_force_mae_meV_A"]
    assert min(r["val_force_mae_meV_A"] for r in rows) < 0.8 * rows[0]["val_force_mae_meV_A"]
    for key in ("lr", "seconds", "val_energy_rmse_meV", "train_force_rmse_meV_A"):
        assert key in rows[0]
    potential, data = load_checkpoint(out / "best.pt", with_metadata=True)
    assert data["dtype"] == "float32" and potential.dtype == torch.float32
    assert data["training"]["split"] == {"seed": 0, "train_frames": 8, "valid_frames": 4}
    assert data["training"]["epochs"] == data["metrics"]["epoch"] == data["training"]["best_epoch"]
    assert data["metrics"]["validation"]["force_mae_meV_A"] == min(r["val_force_mae_meV_A"] for r in rows)
    energies = np.load(npz)["energies"] * 0.0433641043  # kcal/mol -> eV
    train_energies = energies[np.sort(np.random.default_rng(0).permutation(12)[4:])]
    refit = data["training"]["energy_shift_refit_eV"]
    assert potential.energy_shift == pytest.approx(train_energies.mean() + refit, abs=1e-6)
    assert potential.energy_scale == pytest.approx(train_energies.std(), rel=1e-5)
    train_set, _ = load_split(small_config(npz, out))
    assert abs(energy_offset(potential, train_set)) < 1e-5  # the constant offset is re-centred
    # 3 of 8 frames 50 eV off (the data loop's fused atoms) leave it among the other frames' errors; a mean would
    # move by 3 × 50 / 8 eV
    far_out = dataclasses.replace(train_set, energy=train_set.energy + np.where(np.arange(8) < 3, 50.0, 0.0))
    errors = (train_set.energy - predict(potential, train_set, forces=False)[0])[3:]
    assert errors.min() <= energy_offset(potential, far_out) <= errors.max()
    last = read_checkpoint(out / "last.pt")
    assert last["training"]["epochs"] == 6 and "optimizer" in last["extra"]
    assert json.loads((out / "config.json").read_text())["model"] == SMALL


def test_resume_after_interruption_matches_an_uninterrupted_run(npz, tmp_path):
    straight = tmp_path / "straight"
    train(small_config(npz, straight))

    resumed = tmp_path / "resumed"
    train_until_killed(small_config(npz, resumed))
    assert read_checkpoint(resumed / "last.pt")["extra"]["state"]["epoch"] == 2
    with pytest.raises(SakeMDError, match="--resume"):
        train(small_config(npz, resumed))
    train(small_config(npz, resumed), resume=True)
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    for i, state in a["extra"]["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(b["extra"]["optimizer"]["state"][i][name], state[name], rtol=0, atol=0)
    assert [r["epoch"] for r in log_rows(resumed)] == [1, 2, 3, 4]
    assert log_rows(resumed)[3]["val_force_mae_meV_A"] == log_rows(straight)[3]["val_force_mae_meV_A"]


def test_time_budget_plans_the_schedule_and_stops(npz, tmp_path):
    out = tmp_path / "budget"
    assert TrainConfig.preset("cpu", "d.npz", "o").compile  # the compiled step is part of the recipe
    cfg = TrainConfig.preset("cpu", str(npz), str(out), time_budget=3.0, model=SMALL, n_valid=4, batch_size=4,
                             progress=False, compile=False)
    assert cfg.epochs is None and cfg.batch_size == 4 and cfg.energy_weight == 1.0 and cfg.ema_decay == 0.99
    train(cfg)
    data = read_checkpoint(out / "last.pt")
    epochs = data["training"]["epochs"]
    assert epochs >= 1 and data["training"]["seconds"] < 3.0 + 2 * data["training"]["seconds"] / epochs
    assert data["extra"]["state"]["planned_epochs"] == epochs


def test_bad_data_fails_before_training(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, R=np.zeros((3, 2, 3)))
    with pytest.raises(DataError, match="missing keys"):
        train(small_config(bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_paper_preset_and_durations():
    cfg = TrainConfig.preset("paper", "d.npz", "out")
    assert (cfg.batch_size, cfg.epochs, cfg.energy_weight, cfg.weight_decay, cfg.clip) == (4, 5000, 0.001, 1e-5, 1.0)
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(SakeMDError, match="duration"):
        parse_duration("soon")


def test_learning_rate_schedule_is_the_papers():
    cfg = TrainConfig.preset("paper", "d.npz", "out")
    assert learning_rate(0.0, cfg) == 1e-6
    assert learning_rate(0.05, cfg) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert learning_rate(0.1, cfg) == pytest.approx(1e-3)
    assert learning_rate(0.5, cfg) == pytest.approx(0.5e-3)
    assert learning_rate(0.9, cfg) == 0.0 and learning_rate(0.95, cfg) == 0.0


def test_optimiser_adds_coupled_l2_then_clips_then_adam():
    theta = torch.tensor([2.0, -3.0, 0.5], requires_grad=True)
    grads = [torch.tensor([10.0, 0.2, -0.3]), torch.tensor([-0.5, 5.0, 0.1])]
    opt = PaperAdam([theta], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, clip=1.0)
    x, m, v = theta.detach().numpy().copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        theta.grad = g.clone()
        opt.step()
        gt = np.clip(g.numpy() + 0.01 * x, -1, 1)
        m, v = 0.9 * m + 0.1 * gt, 0.999 * v + 0.001 * gt ** 2
        x = x - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(theta.detach().numpy(), x, rtol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(npz, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(small_config(npz, one, epochs=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={free_port()}", "-m", "sake_md.cli", "train", "--data", str(npz), "--out", str(two),
           "--recipe", "paper", "--epochs", "2", "--batch-size", "4", "--valid", "4", "--hidden", "16", "--heads", "2",
           "--layers", "2", "--radial", "16", "--lr", "3e-3", "--warmup-fraction", "0", "--decay-end", "1",
           "--dtype", "float64", "--threads", "1", "--energy-weight", "0.1", "--no-progress"]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best checkpoint") == 1 and "Grad strides" not in result.stderr  # one voice
    a, b = read_checkpoint(one / "last.pt"), read_checkpoint(two / "last.pt")
    assert b["training"]["processes"] == 2 and a["training"]["processes"] == 1
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-9, atol=1e-11)
    for ra, rb in zip(log_rows(one), log_rows(two), strict=True):
        for key in ("train_force_mae_meV_A", "val_force_mae_meV_A", "val_energy_mae_meV"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9)


NEW_RECIPE = dict(loss="mse", energy_per_atom=True, amsgrad=True, ema_decay=0.9, stage_fraction=0.25,
                  stage_energy_weight=10.0)


def test_resume_with_ema_amsgrad_and_energy_stage_is_exact(npz, tmp_path):
    """Every recipe setting round-trips through config.json and --resume; the EMA continues exactly."""
    straight = tmp_path / "straight"
    train(small_config(npz, straight, **NEW_RECIPE))

    resumed = tmp_path / "resumed"
    train_until_killed(small_config(npz, resumed, **NEW_RECIPE))
    saved = json.loads((resumed / "config.json").read_text())
    assert {k: saved[k] for k in NEW_RECIPE} == NEW_RECIPE
    train(TrainConfig.from_dict(saved), resume=True)
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    for x, y in zip(a["extra"]["weight_average"], b["extra"]["weight_average"], strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=0)
    assert "max_exp_avg_sq" in a["extra"]["optimizer"]["state"][0]  # AMSGrad's state
    assert log_rows(resumed)[3]["val_force_mae_meV_A"] == log_rows(straight)[3]["val_force_mae_meV_A"]


def test_weight_average_is_the_exponential_moving_average():
    from sake_md.objective import WeightAverage

    module = torch.nn.Linear(3, 2).double()
    avg = WeightAverage(module, decay=0.8)
    start = [p.detach().clone() for p in module.parameters()]
    expected = [s.clone() for s in start]
    for k in range(3):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * (k + 1))
        avg.update()
        expected = [0.8 * e + 0.2 * p.detach() for e, p in zip(expected, module.parameters(), strict=True)]
    raw = [p.detach().clone() for p in module.parameters()]
    with avg.swapped():
        for p, e in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-15)
    for p, r in zip(module.parameters(), raw, strict=True):
        assert torch.equal(p.detach(), r)


@pytest.mark.parametrize("loss", ["mae", "mse", "huber"])
def test_loss_forms_equal_a_direct_computation(loss):
    from sake_md.train import loss_from
    from sake_md.units import KCAL_PER_MOL

    rng = np.random.default_rng(0)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    df = torch.tensor(rng.normal(size=(2, 3, 3)) * 0.05) * mask[..., None]
    de = torch.tensor(rng.normal(size=2) * 0.1)
    cfg = TrainConfig(data="x", out="y", loss=loss, energy_weight=0.3, force_weight=2.0, energy_per_atom=True,
                      huber_delta=0.5)
    f = df.numpy()[mask.numpy()].ravel() / KCAL_PER_MOL
    e = de.numpy() / np.array([3, 2]) / KCAL_PER_MOL
    fn = {"mae": np.abs, "mse": np.square,
          "huber": lambda x: np.where(np.abs(x) < 0.5, 0.5 * x * x, 0.5 * (np.abs(x) - 0.25))}[loss]
    expected = 2.0 * fn(f).mean() + 0.3 * fn(e).mean()
    assert float(loss_from(de, df, mask, cfg)) == pytest.approx(expected, rel=1e-12)


def test_unknown_loss_is_refused():
    with pytest.raises(SakeMDError, match="unknown loss"):
        TrainConfig(data="x", out="y", loss="l3")


def test_best_checkpoint_holds_the_averaged_weights(npz, tmp_path):
    out = tmp_path / "one"
    train(small_config(npz, out, epochs=1, ema_decay=0.5, refit_shift=False))
    best, last = read_checkpoint(out / "best.pt"), read_checkpoint(out / "last.pt")
    names = list(last["state_dict"])
    differs = False
    for name, avg in zip(names, last["extra"]["weight_average"], strict=True):
        torch.testing.assert_close(best["state_dict"][name], avg, rtol=0, atol=0)
        differs |= not torch.equal(last["state_dict"][name], avg)
    assert differs  # the raw weights are not what was saved as best


def test_a_short_run_of_the_budget_recipe_lowers_the_validation_error(npz, tmp_path):
    """The CPU recipe as it ships (EMA, MAE with per-atom energies, cosine over the run), briefly."""
    out = tmp_path / "budget"
    # batch 1: enough optimiser steps on 8 frames for the EMA (decay 0.99 per step) to move
    cfg = TrainConfig.preset("cpu", str(npz), str(out), epochs=30, batch_size=1, model=SMALL, n_valid=4,
                             progress=False, compile=False, lr=1e-2)
    assert cfg.ema_decay == 0.99 and cfg.loss == "mae" and cfg.energy_per_atom and cfg.time_budget is None
    train(cfg)
    rows = log_rows(out)
    assert rows[-1]["val_force_mae_meV_A"] < 0.7 * rows[0]["val_force_mae_meV_A"]


def test_finalize_reads_best_once_and_writes_it_once(npz, tmp_path, monkeypatch):
    """The end of a run (energy-shift refit, test errors) works on best.pt in memory: one read, one write."""
    import sake_md.checkpoint
    import sake_md.train as training

    out = tmp_path / "run"
    train(small_config(npz, out, epochs=1, refit_shift=False))
    calls = {"read": 0, "write": 0}
    read, save = sake_md.checkpoint.read_checkpoint, training.save_checkpoint

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(sake_md.checkpoint, "read_checkpoint", counted("read", read))
    monkeypatch.setattr(training, "save_checkpoint", counted("write", save))
    report = training.finalize(small_config(npz, out, test=str(npz)), out, load_split(small_config(npz, out))[0])
    assert calls == {"read": 1, "write": 1}
    data = read(out / "best.pt")
    assert data["metrics"]["test"] == report and "energy_shift_refit_eV" in data["training"]
    assert report["checkpoint"] == str(out / "best.pt")


def test_the_model_settings_are_a_model_config_and_config_json_keeps_its_form(npz, tmp_path):
    """TrainConfig.model is a ModelConfig; config.json keeps the dict an older run wrote, and such a dict loads."""
    cfg = small_config(npz, tmp_path / "run")
    assert isinstance(cfg.model, ModelConfig) and cfg.model.hidden == 16
    assert cfg.to_dict()["model"] == SMALL
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert not cfg.timed and TrainConfig.preset("cpu", "d", "o").timed
    assert not TrainConfig.preset("cpu", "d", "o", epochs=3).timed  # the CPU recipe for fixed epochs
    old = TrainConfig.preset("budget", "d", "o")  # the CPU recipe's first name (old config.json files, studies)
    assert old.recipe == "cpu" and old.to_dict() == TrainConfig.preset("cpu", "d", "o").to_dict()


def test_fine_tuning_starts_from_the_checkpoint_and_refuses_what_it_cannot_continue(npz, tmp_path):
    """--init: the run starts from the checkpoint's weights and energy normalisation (its first epoch fits as
    well as the checkpoint did, a fresh model's far worse); another model or an unknown element is refused."""
    from sake_md.checkpoint import save_checkpoint
    from sake_md.model import SAKEPotential
    from sake_md.train import initial_potential

    first = tmp_path / "first"
    train(small_config(npz, first, epochs=30, batch_size=2, lr=1e-2))
    trained = load_checkpoint(first / "best.pt")
    cfg = small_config(npz, tmp_path / "tuned", init=str(first / "best.pt"), epochs=2, lr=1e-4, lr_start=1e-4,
                       select="last")
    start = initial_potential(cfg, [1, 6, 8])
    assert (start.energy_scale, start.energy_shift) == (trained.energy_scale, trained.energy_shift)
    for a, b in zip(start.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    train(cfg)
    train(small_config(npz, tmp_path / "fresh", epochs=2, lr=1e-4, lr_start=1e-4))
    tuned, fresh = log_rows(tmp_path / "tuned")[0], log_rows(tmp_path / "fresh")[0]
    assert tuned["train_force_mae_meV_A"] < 0.25 * fresh["train_force_mae_meV_A"]
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init"] == str(first / "best.pt")
    assert read_checkpoint(tmp_path / "tuned" / "best.pt")["training"]["best_epoch"] == 2  # select="last"
    with pytest.raises(SakeMDError, match="select must be 'best' or 'last'"):
        small_config(npz, tmp_path / "x", select="first")

    other = small_config(npz, tmp_path / "other", init=str(first / "best.pt"), model={**SMALL, "hidden": 8})
    with pytest.raises(SakeMDError, match="is not the run's"):
        train(other)
    hydrogen = save_checkpoint(tmp_path / "h.pt", SAKEPotential([1], ModelConfig(**SMALL)))
    with pytest.raises(DataError, match=r"knows the elements \[1\] only.*\[6, 8\]"):
        train(small_config(npz, tmp_path / "h", init=str(hydrogen)))


def test_the_first_epochs_estimate_leaves_the_compile_out(npz, tmp_path, monkeypatch, capsys):
    from sake_md import train as training

    original, calls = training.Trainer.eager_step, []

    def slow_first_call(self, *args, **kwargs):  # stands for a compile on the step's first call
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(training.Trainer, "eager_step", slow_first_call)
    train(small_config(npz, tmp_path / "run", epochs=3, compile=False))
    line = next(s for s in capsys.readouterr().err.splitlines() if "epoch 1 took" in s)
    first, later = log_rows(tmp_path / "run")[0]["seconds"], log_rows(tmp_path / "run")[1]["seconds"]
    assert "s of it compiling the step)" in line and first > 2.0 > 10 * later
    # 3 epochs: the first (with its compile) and 2 at the later speed (~2 s in all), not 3 x the first (> 6 s)
    estimate = float(line.split("3 epochs take about ")[1].removesuffix(" s at this speed"))
    assert estimate < 1.5 * first
