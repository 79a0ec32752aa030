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
