"""Runs trained together (``sake_md.stacked``): the same steps, files and errors as each run alone, resume both
ways, and clear refusals of runs that cannot share a step."""

import json
import warnings

import pytest
import torch

from sake_md import distributed
from sake_md.checkpoint import read_checkpoint
from sake_md.compile_train import CompiledTrainStep
from sake_md.errors import SakeMDError
from sake_md.model import ModelConfig
from sake_md.stacked import StackedTraining, train_stacked
from sake_md.train import Trainer, train

from .test_data import emt_frames, write_npz
from .test_train import Killed, small_config

TINY = ModelConfig(hidden=8, heads=2, layers=2, radial=8).to_dict()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    """Two 9-atom C/H/O molecules (ethanol, dimethyl ether), 12 EMT frames each."""
    d = tmp_path_factory.mktemp("stack_data")
    return (write_npz(d / "ethanol.npz", emt_frames(12, seed=3)),
            write_npz(d / "ether.npz", emt_frames(12, seed=4, molecule="CH3OCH3")))


def configs(molecules, out, **overrides):
    """Three runs: ethanol seeds 0 and 1, ether seed 0; the CPU recipe's loss and weight average."""
    settings = {"model": TINY, "epochs": 3, "loss": "mae", "energy_per_atom": True, "energy_weight": 1.0,
                "ema_decay": 0.9, **overrides}
    runs = [(molecules[0], 0), (molecules[0], 1), (molecules[1], 0)]
    return [small_config(data, out / f"run{k}", seed=seed, **settings) for k, (data, seed) in enumerate(runs)]


def alone(cfg, step_backend=None):
    """Train one run by itself (the compiled step's padding with ``step_backend``, else eagerly)."""
    trainer = Trainer(cfg, distributed.Context(), CPU)
    if step_backend:
        trainer.step = CompiledTrainStep.for_trainer(trainer, backend=step_backend)
    (trainer.out).mkdir(parents=True, exist_ok=True)
    trainer.fit()
    return trainer


def assert_same_run(a, b, atol=1e-10):
    """Two run folders hold the same weights, weight average, optimiser state and log."""
    la, lb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    for key, value in la["state_dict"].items():
        torch.testing.assert_close(lb["state_dict"][key], value, rtol=0, atol=atol, msg=key)
    for x, y in zip(la["extra"]["weight_average"], lb["extra"]["weight_average"], strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=atol)
    sa, sb = la["extra"]["optimizer"]["state"], lb["extra"]["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sb[i][key], sa[i][key], rtol=0, atol=atol)
    assert la["extra"]["state"]["step"] == lb["extra"]["state"]["step"]
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert len(rows[0]) == len(rows[1])
    for ra, rb in zip(*rows, strict=True):
        for key in ra:
            if key != "seconds":
                assert rb[key] == pytest.approx(ra[key], rel=1e-7, abs=1e-9), key


@pytest.mark.parametrize("n_valid", [4, 3], ids=["full batches", "last batch padded"])
def test_stacked_runs_take_the_steps_of_each_run_alone(molecules, tmp_path, n_valid):
    """8 or 9 training frames at batch 4: with 9, the last batch repeats its own frame as the compiled step does."""
    cfgs = configs(molecules, tmp_path / "stacked", n_valid=n_valid)
    train_stacked(cfgs, compile=False, finalize=False)
    for k, cfg in enumerate(configs(molecules, tmp_path / "alone", n_valid=n_valid)):
        alone(cfg, step_backend="eager" if n_valid == 3 else None)
        assert_same_run(tmp_path / "alone" / f"run{k}", tmp_path / "stacked" / f"run{k}")
    meta = read_checkpoint(tmp_path / "stacked" / "run2" / "best.pt")["training"]
    assert meta["stacked"] == 3 and meta["epochs"] == 3


def test_traced_stacked_step_equals_the_eager_one(molecules, tmp_path):
    """The make_fx graph (aot_eager backend: the traced graph without inductor) takes the eager steps."""
    train_stacked(configs(molecules, tmp_path / "eager"), compile=False, finalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed trace would fall back to the eager step silently
        train_stacked(configs(molecules, tmp_path / "traced", compile=True), backend="aot_eager", finalize=False)
    for k in range(3):
        assert_same_run(tmp_path / "eager" / f"run{k}", tmp_path / "traced" / f"run{k}")


def test_killed_stacked_run_resumes_stacked_or_alone(molecules, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train_stacked(configs(molecules, full), compile=False, finalize=False)

    def kill_after_first_epoch(trainer, row):
        if row["epoch"] == 1 and trainer.cfg.out.endswith("run2"):
            raise Killed

    with pytest.raises(Killed):
        train_stacked(configs(molecules, part), compile=False, finalize=False, on_epoch_end=kill_after_first_epoch)
    # runs 0 and 1 alone, run 2 ... every run resumes from epoch 1 either way
    train(configs(molecules, part)[0], resume=True)
    train_stacked(configs(molecules, part)[1:], resume=True, compile=False, finalize=False)
    for k in range(3):
        assert_same_run(full / f"run{k}", part / f"run{k}")


def test_finalize_attaches_test_errors_to_every_run(molecules, tmp_path):
    cfgs = configs(molecules, tmp_path, epochs=1)
    for cfg, data in zip(cfgs, (molecules[0], molecules[0], molecules[1]), strict=True):
        cfg.test = str(data)
    for best in train_stacked(cfgs, compile=False):
        metrics = read_checkpoint(best)["metrics"]
        assert metrics["test"]["frames"] == 12 and "energy_shift_refit_eV" in read_checkpoint(best)["training"]


def test_runs_that_cannot_share_a_step_are_refused(molecules, tmp_path):
    cfgs = configs(molecules, tmp_path)
    other_model = configs(molecules, tmp_path / "b", model={**TINY, "hidden": 16})[0]
    with pytest.raises(SakeMDError, match="differs in model"):
        train_stacked([cfgs[0], other_model], compile=False)
    small = write_npz(tmp_path / "water.npz", emt_frames(12, seed=5, molecule="H2O"))
    water = configs((small, small), tmp_path / "c")[0]
    with pytest.raises(SakeMDError, match="species list|one molecule size"):
        StackedTraining([Trainer(c, distributed.Context(), CPU) for c in (cfgs[1], water)], compile=False)
    timed = configs(molecules, tmp_path / "d", epochs=None, time_budget=10.0)
    with pytest.raises(SakeMDError, match="fixed number of epochs"):
        train_stacked(timed[:2], compile=False)
