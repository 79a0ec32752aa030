"""The compiled training step: same gradients and loss curve as the eager step, padding, size buckets,
recompiles, eager fallback, and ``sake-md train --compile`` with --resume and DDP.

Inductor compiles are slow on a CPU, so only one shape (4 frames × 9 atoms, float64) is compiled with
inductor; every inductor test uses that shape, so after the first compile torch's cache serves them.
The logic of shapes, buckets and recompiles is checked with the "eager" backend (same traced graph).
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sake_md.objective
import sake_md.train
from sake_md import compile_train, distributed
from sake_md.checkpoint import read_checkpoint
from sake_md.cli import main
from sake_md.compile_train import CompiledTrainStep, bucket_atoms, pad_batch
from sake_md.data import frames_to_dataset, labelled_batch
from sake_md.model import ModelConfig
from sake_md.spatial import SPATIAL_BLOCKS
from sake_md.train import PaperAdam, Trainer, train

from .test_data import emt_frames
from .test_train import free_port, log_rows, small_config, train_until_killed

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
TINY = ModelConfig(hidden=8, heads=2, layers=2, radial=8).to_dict()
CPU = torch.device("cpu")


def tiny_config(data, out, **overrides):
    """test_train's settings with the tiny model and 3 epochs."""
    return small_config(data, out, **{"model": TINY, "epochs": 3, **overrides})


@pytest.fixture(scope="module")
def trainers(npz, tmp_path_factory):
    """An eager and a compiled (inductor) trainer with the same initial weights, and those weights."""
    out = tmp_path_factory.mktemp("runs")
    eager = Trainer(tiny_config(npz, out / "eager"), distributed.Context(), CPU)
    compiled = Trainer(tiny_config(npz, out / "compiled", compile=True), distributed.Context(), CPU)
    assert eager.step == eager.eager_step and isinstance(compiled.step, CompiledTrainStep)
    init = {k: v.clone() for k, v in eager.potential.state_dict().items()}
    compiled.potential.load_state_dict(init)
    return eager, compiled, init


@pytest.fixture(scope="module")
def mixed():
    """Ethanol (9 atoms) and methanol (6 atoms) frames: same elements, two sizes."""
    frames = emt_frames(4, seed=1) + emt_frames(4, seed=2, molecule="CH3OH")
    return frames_to_dataset(frames, "energy", "forces", "mixed")


def grads(potential):
    return [None if p.grad is None else p.grad.clone() for p in potential.parameters()]


def assert_same_grads(a, b, atol=1e-10):
    assert [g is None for g in a] == [g is None for g in b]
    for x, y in zip(a, b, strict=True):
        if x is not None:
            torch.testing.assert_close(y, x, rtol=0, atol=atol)


def eager_reference(trainer, lb, cfg):
    loss, de, df = trainer.eager_step(lb, cfg)
    return float(loss.detach()), de.detach(), df.detach(), grads(trainer.potential)


def test_bucket_sizes_and_padding(npz, trainers):
    assert bucket_atoms(9, 9) == 9  # one molecule: never padded
    assert [bucket_atoms(n, 21) for n in (3, 6, 8, 9, 16, 17, 21)] == [8, 8, 8, 16, 16, 21, 21]
    assert bucket_atoms(30, 21) == 30  # bigger than the data said: its own size
    eager, _, _ = trainers
    lb = labelled_batch(eager.train_set, np.array([0, 1, 2]), eager.potential.species_index, torch.float64)
    padded = pad_batch(lb, 5, 12)
    assert padded.batch.positions.shape == (5, 12, 3) and padded.indices.tolist() == [0, 1, 2, 0, 1]
    assert padded.batch.mask.sum().item() == 5 * 9 and not padded.batch.mask[:, 9:].any()
    torch.testing.assert_close(padded.forces[3, :9], lb.forces[0])
    assert padded.energy[4] == lb.energy[1] and (padded.forces[:, 9:] == 0).all()


def test_compiled_step_gives_eager_gradients_and_loss_curve(trainers):
    """Four optimiser steps side by side in float64; a loss weight raised midway needs no new graph."""
    eager, compiled, init = trainers
    cfg_e, cfg_c = eager.cfg, compiled.cfg
    for t in (eager, compiled):
        t.potential.load_state_dict(init)
        t.optimizer = PaperAdam(t.potential.parameters(), 3e-3, t.cfg.betas, t.cfg.eps, t.cfg.weight_decay, t.cfg.clip)
    index = eager.potential.species_index
    for k in range(4):
        if k == 2:
            cfg_e.energy_weight = cfg_c.energy_weight = 0.7
        lb = labelled_batch(eager.train_set, np.arange(4) + 4 * (k % 2), index, torch.float64)
        loss_e, de_e, df_e, g_e = eager_reference(eager, lb, cfg_e)
        loss_c, de_c, df_c = compiled.step(lb, cfg_c)
        assert float(loss_c) == pytest.approx(loss_e, rel=1e-12, abs=1e-12)
        torch.testing.assert_close(de_c, de_e, rtol=0, atol=1e-10)
        torch.testing.assert_close(df_c, df_e, rtol=0, atol=1e-10)
        assert_same_grads(g_e, grads(compiled.potential))
        eager.optimizer.step()
        compiled.optimizer.step()
    cfg_e.energy_weight = cfg_c.energy_weight = 0.1
    assert compiled.step.n_graphs == 1 and not compiled.step.failed
    for key, value in eager.potential.state_dict().items():
        torch.testing.assert_close(compiled.potential.state_dict()[key], value, rtol=0, atol=1e-10)
    assert any(not torch.equal(v, init[k]) for k, v in eager.potential.state_dict().items())


def test_runs_with_other_energy_normalisations_trace_to_one_graph(trainers):
    """Each run's data gives its own energy scale and shift; they are inputs of the traced step, so every run of
    one architecture and shape compiles the same graph and torch's cache serves all but the first."""
    import copy

    _, compiled, _ = trainers
    other = copy.deepcopy(compiled.potential)
    other.energy_scale, other.energy_shift = 3.0 * other.energy_scale, other.energy_shift - 50.0
    lb = labelled_batch(compiled.train_set, np.arange(4), other.species_index, torch.float64)
    steps = [CompiledTrainStep(p, 4, 9, verbose=False, backend="eager") for p in (compiled.potential, other)]
    codes = [step.trace(lb, compiled.cfg, ())[0].code for step in steps]
    assert codes[0] == codes[1]


@pytest.mark.parametrize("variant", list(SPATIAL_BLOCKS))
def test_every_variant_traces_to_the_eager_gradients(npz, tmp_path, variant):
    """The traced graph of every registered variant (run by the "eager" backend) = the eager step."""
    model = ModelConfig(variant=variant, hidden=8, heads=2, layers=2, radial=8).to_dict()
    trainer = Trainer(tiny_config(npz, tmp_path, model=model), distributed.Context(), CPU)
    step = CompiledTrainStep.for_trainer(trainer, backend="eager")
    lb = labelled_batch(trainer.train_set, np.arange(4), trainer.potential.species_index, torch.float64)
    loss_c, de_c, df_c = step(lb, trainer.cfg)
    g_c = grads(trainer.potential)
    loss_e, de_e, df_e, g_e = eager_reference(trainer, lb, trainer.cfg)
    assert not step.failed and float(loss_c) == pytest.approx(loss_e, rel=1e-12)
    torch.testing.assert_close(df_c, df_e, rtol=0, atol=1e-10)
    assert_same_grads(g_e, g_c)


def test_partial_batch_is_padded_by_repeating_its_frames(trainers):
    eager, _, init = trainers
    eager.potential.load_state_dict(init)
    step = CompiledTrainStep(eager.potential, frames=4, n_max=9, backend="eager", verbose=False)
    index = eager.potential.species_index
    lb = labelled_batch(eager.train_set, np.array([5, 2, 7]), index, torch.float64)
    loss_c, de_c, df_c = step(lb, eager.cfg)
    g_c = grads(eager.potential)
    _, de_e, df_e, _ = eager_reference(eager, lb, eager.cfg)
    torch.testing.assert_close(de_c, de_e, rtol=0, atol=1e-10)  # the real frames only
    torch.testing.assert_close(df_c, df_e, rtol=0, atol=1e-10)
    repeated = labelled_batch(eager.train_set, np.array([5, 2, 7, 5]), index, torch.float64)
    loss_e, _, _, g_e = eager_reference(eager, repeated, eager.cfg)
    assert float(loss_c) == pytest.approx(loss_e, rel=1e-12)
    assert_same_grads(g_e, g_c)
    step(labelled_batch(eager.train_set, np.arange(4), index, torch.float64), eager.cfg)
    assert step.n_graphs == 1  # the full batch uses the same graph


def test_new_molecule_size_recompiles_and_stays_correct(trainers, mixed):
    eager, _, init = trainers
    eager.potential.load_state_dict(init)
    step = CompiledTrainStep(eager.potential, frames=2, n_max=9, backend="eager", verbose=False)
    index = eager.potential.species_index
    for indices, shape, n_graphs in (([0, 1], (2, 9, 3), 1), ([4, 5], (2, 8, 3), 2), ([2, 6], (2, 9, 3), 2),
                                     ([7, 6], (2, 8, 3), 2)):
        lb = labelled_batch(mixed, np.array(indices), index, torch.float64)
        _, de_c, df_c = step(lb, eager.cfg)
        g_c = grads(eager.potential)
        _, de_e, df_e, g_e = eager_reference(eager, lb, eager.cfg)
        assert step.n_graphs == n_graphs and shape in [k[0] for k in step.graphs]
        torch.testing.assert_close(de_c, de_e, rtol=0, atol=1e-10)
        torch.testing.assert_close(df_c, df_e, rtol=0, atol=1e-10)
        assert_same_grads(g_e, g_c)


def test_a_loss_setting_read_as_a_constant_makes_a_new_graph(trainers, monkeypatch):
    """A loss that branches on its settings: floats become constants, and a change recompiles."""
    eager, _, init = trainers
    eager.potential.load_state_dict(init)

    def branching_loss(de, df, mask, cfg):
        force = df.abs().sum() / (3.0 * mask.sum()) if cfg.recipe == "paper" else (df * df).mean()
        return force + cfg.energy_weight * de.abs().mean() if cfg.energy_weight > 0 else force

    monkeypatch.setattr(sake_md.objective, "loss_from", branching_loss)  # the one definition both steps read
    step = CompiledTrainStep(eager.potential, frames=4, n_max=9, backend="eager", verbose=False)
    cfg = tiny_config("x.npz", "out")
    lb = labelled_batch(eager.train_set, np.arange(4), eager.potential.species_index, torch.float64)
    losses = []
    for recipe, weight, n_graphs in (("paper", 0.1, 1), ("paper", 0.1, 1), ("cpu", 0.1, 2), ("paper", 0.5, 3)):
        cfg.recipe, cfg.energy_weight = recipe, weight
        losses.append(float(step(lb, cfg)[0]))
        assert step.n_graphs == n_graphs
        assert losses[-1] == pytest.approx(eager_reference(eager, lb, cfg)[0], rel=1e-12)
    assert not step.failed and len(set(losses)) == 3


def test_eager_fallback_when_compiling_fails(trainers, monkeypatch):
    eager, _, init = trainers
    eager.potential.load_state_dict(init)

    def broken(*args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compile_train, "_compile", broken)
    step = CompiledTrainStep(eager.potential, frames=4, n_max=9, verbose=False)
    lb = labelled_batch(eager.train_set, np.arange(4), eager.potential.species_index, torch.float64)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*training eagerly"):
        loss_c, de_c, df_c = step(lb, eager.cfg)
    g_c = grads(eager.potential)
    loss_e, de_e, df_e, g_e = eager_reference(eager, lb, eager.cfg)
    assert step.failed and float(loss_c) == pytest.approx(loss_e, rel=1e-12)
    assert_same_grads(g_e, g_c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per step
        step(lb, eager.cfg)


@pytest.mark.slow
def test_train_compile_with_resume_matches_an_eager_run(npz, tmp_path):
    """``sake-md train --compile``, killed after epoch 2 and resumed from the CLI = an eager run."""
    straight = tmp_path / "eager"
    train(tiny_config(npz, straight))

    out = tmp_path / "compiled"
    train_until_killed(tiny_config(npz, out, compile=True))
    args = ["train", "--data", str(npz), "--out", str(out), "--resume", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in log_rows(out)] == [1, 2, 3]
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(out / "last.pt")
    assert b["training"]["settings"]["compile"] and not a["training"]["settings"]["compile"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-9)
    for ra, rb in zip(log_rows(straight), log_rows(out), strict=True):
        assert rb["train_force_mae_meV_A"] == pytest.approx(ra["train_force_mae_meV_A"], rel=1e-8)


def test_auto_resumed_run_weighs_the_compile_against_the_epochs_left(npz, tmp_path, monkeypatch, capsys):
    """compile=auto decides after a resume has restored the progress: 2 of 5 epochs left, not 5."""
    train(tiny_config(npz, tmp_path))  # 3 epochs done
    weighed = []
    monkeypatch.setattr(sake_md.train, "should_compile", lambda calls, work_s, compile_s: weighed.append(work_s))
    capsys.readouterr()
    fresh = Trainer(tiny_config(npz, tmp_path / "fresh", epochs=5, compile="auto"), distributed.Context(), CPU)
    sake_md.train.open_run(fresh, resume=False)
    resumed = Trainer(tiny_config(npz, tmp_path, epochs=5, compile="auto"), distributed.Context(), CPU)
    sake_md.train.open_run(resumed, resume=True)
    err = capsys.readouterr().err
    assert "compile=auto: 5 epochs, about" in err and "compile=auto: 2 epochs left, about" in err
    assert resumed.state["epoch"] == 3 and len(weighed) == 2


@pytest.mark.slow
def test_two_compiled_processes_match_one_eager_process(npz, tmp_path):
    """DDP: each process runs the compiled step on 4 of the 8 frames and all-reduces the gradients."""
    one, two = tmp_path / "one", tmp_path / "two"
    train(tiny_config(npz, one, epochs=2, batch_size=8))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={free_port()}", "-m", "sake_md.cli", "train", "--data", str(npz), "--out", str(two),
           "--recipe", "paper", "--epochs", "2", "--batch-size", "8", "--valid", "4", "--hidden", "8", "--heads", "2",
           "--layers", "2",
           "--radial", "8", "--lr", "3e-3", "--warmup-fraction", "0", "--decay-end", "1", "--dtype", "float64",
           "--threads", "1", "--energy-weight", "0.1", "--no-progress", "--compile"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training eagerly" not in result.stderr
    a, b = read_checkpoint(one / "last.pt"), read_checkpoint(two / "last.pt")
    assert b["training"]["processes"] == 2
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-9, atol=1e-11)
