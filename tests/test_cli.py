"""The command line passes variant options through to the checkpoint and refuses misspelled ones."""

from click.testing import CliRunner

from sake_md.checkpoint import read_checkpoint
from sake_md.cli import main

from .test_data import emt_frames, write_npz

TINY = ["--hidden", "8", "--heads", "2", "--layers", "1", "--radial", "8", "--epochs", "1", "--valid", "2",
        "--batch-size", "4", "--no-progress"]


def test_model_options_reach_the_checkpoint(tmp_path):
    data = write_npz(tmp_path / "emt.npz", emt_frames(6, seed=1))
    args = ["train", "--model", "sake-sh", "--model-option", "lmax=2", "--data", str(data),
            "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args + TINY)
    assert result.exit_code == 0, result.output
    ckpt = read_checkpoint(tmp_path / "r" / "best.pt")
    assert ckpt["variant"] == "sake-sh" and ckpt["config"]["options"] == {"lmax": 2}


def test_misspelled_model_option_is_a_clear_error(tmp_path):
    data = write_npz(tmp_path / "emt.npz", emt_frames(6, seed=1))
    args = ["train", "--model", "sake-sh", "--model-option", "lmaxx=2", "--data", str(data),
            "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args + TINY)
    assert result.exit_code != 0
    assert "has no option(s) lmaxx; its options: lmax, lambda_per_order" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, args[:3] + ["--model-option", "lmax"] + args[5:] + TINY)
    assert result.exit_code != 0 and "expected KEY=VALUE" in result.output


def test_choices_and_defaults_come_from_the_library():
    """A new ensemble, preset or dtype, or a new model default, reaches the CLI without a second edit."""
    import sake_md.cli as cli
    from sake_md.devices import DTYPE_NAMES
    from sake_md.md.run import ENSEMBLES, MDSettings
    from sake_md.md.stability import PRESETS
    from sake_md.model import ModelConfig

    def option(command, name):
        (p,) = [p for p in main.commands[command].params if p.name == name]
        return p

    assert list(option("run", "ensemble").type.choices) == list(ENSEMBLES)
    assert option("run", "ensemble").default == MDSettings().ensemble
    assert option("run", "steps").default == MDSettings().steps
    assert list(option("compare", "preset").type.choices) == list(PRESETS)
    for command in ("train", "run", "compare", "compile"):
        assert list(option(command, "dtype").type.choices) == list(DTYPE_NAMES)
    for name in ("hidden", "heads", "layers", "radial"):
        assert option("train", name).default == getattr(ModelConfig(), name)
    assert cli.TRAIN["n_valid"] == option("train", "n_valid").default


def test_init_fine_tunes_the_checkpoints_model_and_refuses_another(tmp_path):
    data = write_npz(tmp_path / "emt.npz", emt_frames(6, seed=1))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "r")]
    assert CliRunner().invoke(main, args + TINY).exit_code == 0
    start = str(tmp_path / "r" / "best.pt")
    tuned = ["train", "--data", str(data), "--init", start, "--epochs", "2", "--valid", "2", "--valid-pool", "4",
             "--select", "last", "--lr", "3e-4", "--no-progress"]  # the README's fine-tuning command
    result = CliRunner().invoke(main, tuned + ["--out", str(tmp_path / "t")])  # no model options: the checkpoint's
    assert result.exit_code == 0, result.output
    assert read_checkpoint(tmp_path / "t" / "best.pt")["config"] == read_checkpoint(start)["config"]
    training = read_checkpoint(tmp_path / "t" / "best.pt")["training"]
    assert training["settings"]["valid_pool"] == 4 and training["best_epoch"] == 2  # --select last
    result = CliRunner().invoke(main, tuned + ["--out", str(tmp_path / "u"), "--hidden", "16"])
    assert result.exit_code != 0 and "--hidden 16 disagrees with --init" in result.output
    assert "Traceback" not in result.output
