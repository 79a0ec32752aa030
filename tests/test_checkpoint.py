"""Checkpoints: a round trip gives identical outputs; every way a file can be wrong has its own message."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sake_md import load_checkpoint, save_checkpoint
from sake_md.checkpoint import FORMAT_VERSION, checkpoint_dict
from sake_md.cli import main
from sake_md.errors import CheckpointError

from .physics import energy_forces
from .test_model import molecule, perturbed_potential


@pytest.fixture(scope="module")
def potential():
    return perturbed_potential("sake")


def test_round_trip_identical(potential, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", potential, training={"source": "test"}, metrics={"f_mae": 1.0})
    raw = torch.load(path, weights_only=True)  # data, not a pickle
    assert raw["format_version"] == FORMAT_VERSION and raw["variant"] == "sake"
    loaded = load_checkpoint(path)
    assert loaded.config == potential.config and loaded.atomic_numbers == potential.atomic_numbers
    assert loaded.dtype == torch.float64
    z, x = molecule("CH3CH2OH")
    E0, F0 = energy_forces(potential, z, x)
    E1, F1 = energy_forces(loaded, z, x)
    assert E0 == E1
    np.testing.assert_array_equal(F0, F1)


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "a.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a sake_md checkpoint"):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="PyTorch file but not a sake_md checkpoint"):
        load_checkpoint(tmp_path / "b.pt")


def test_corrupted(potential, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", potential)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_newer_format(potential, tmp_path):
    d = checkpoint_dict(potential)
    d["format_version"] = FORMAT_VERSION + 1
    torch.save(d, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}.*Upgrade sake_md"):
        load_checkpoint(tmp_path / "new.pt")


def test_weights_do_not_match_config(potential, tmp_path):
    d = checkpoint_dict(potential)
    d["config"]["hidden"] = 32
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "bad.pt")


def test_info_cli(potential, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", potential, training={"source": "rmd17_ethanol_train_01.npz"})
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("variant:", "sake", "parameters:", "H(1) C(6) N(7) O(8)", "rmd17_ethanol_train_01.npz"):
        assert text in result.output
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing.pt")])
    assert result.exit_code != 0 and "checkpoint not found" in result.output and "Traceback" not in result.output


def v1_dict(potential) -> dict:
    """What format 1 stored: maps that read h̃ with the reference's input order f·K + k."""
    d = checkpoint_dict(potential)
    c, maps = potential.config, type(potential.backbone.layers[0].spatial).h_tilde_maps
    suffixes = tuple(f".spatial.{name}.weight" for name in maps)
    d["state_dict"] = {k: v.reshape(-1, c.heads, c.hidden).transpose(1, 2).reshape(v.shape) if k.endswith(suffixes)
                       else v for k, v in d["state_dict"].items()}
    d["format_version"] = 1
    return d


@pytest.mark.parametrize("variant", ["sake", "sake-dot"])
def test_format_1_is_migrated(variant, tmp_path):
    potential = perturbed_potential(variant)
    torch.save(v1_dict(potential), tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt")
    z, x = molecule("CH3CH2OH")
    E0, F0 = energy_forces(potential, z, x)
    E1, F1 = energy_forces(loaded, z, x)
    assert E1 == pytest.approx(E0, abs=1e-12)
    np.testing.assert_allclose(F1, F0, atol=1e-12)


def test_format_1_optimiser_state_is_migrated(tmp_path):
    """A run resumed from a format-1 last.pt continues with the same Adam moments per weight."""
    from sake_md.checkpoint import read_checkpoint

    potential = perturbed_potential("sake")
    opt = torch.optim.Adam(potential.parameters())
    z, x = molecule("CH3CH2OH")
    energy_forces(potential, z, x)  # warm-up, no grads
    from sake_md.batch import collate

    b = collate([z], [x], potential.species_index, torch.float64)
    potential.predict(b.species, b.positions, b.mask, training=True)["forces"].square().sum().backward()
    opt.step()
    d = v1_dict(potential)
    names = [n for n, _ in potential.named_parameters()]
    state = opt.state_dict()
    c = potential.config
    d["extra"] = {"optimizer": {**state, "state": {
        i: {k: (v.reshape(-1, c.heads, c.hidden).transpose(1, 2).reshape(v.shape)
                if names[i].endswith(".spatial.x_mixing.weight") and v.dim() == 2 else v) for k, v in st.items()}
        for i, st in state["state"].items()}}}
    torch.save(d, tmp_path / "v1.pt")
    migrated = read_checkpoint(tmp_path / "v1.pt")["extra"]["optimizer"]["state"]
    for i, st in state["state"].items():
        for k, v in st.items():
            assert torch.equal(migrated[i][k], v), (names[i], k)


def test_saved_file_has_ordinary_permissions(potential, tmp_path):
    """Checkpoints, MD state files and study records: one atomic writer, ordinary permissions (the MD state
    files were left at mkstemp's 0600)."""
    import os
    import stat

    from sake_md.md.segments import atomic_torch_save
    from sake_md.study.jobs import write_json

    umask = os.umask(0o022)
    try:
        paths = [save_checkpoint(tmp_path / "m.pt", potential), atomic_torch_save({"a": 1}, tmp_path / "state.pt"),
                 write_json(tmp_path / "record.json", {"a": 1})]
    finally:
        os.umask(umask)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o644] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "record.json", "state.pt"]  # no temporary left
