"""``sake-md learn``: the data loop with ASE's EMT as the oracle, on tiny models and data (seconds)."""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from sake_md.checkpoint import read_checkpoint
from sake_md.data import read_dataset
from sake_md.errors import ConfigError
from sake_md.learn import (
    FINE_TUNE_LR,
    LearnSettings,
    bond_angles,
    closed_angle_frames,
    distorted_frames,
    learn,
    make_oracle,
    outside_training_range,
    select_frames,
)

from .test_data import emt_frames, write_npz

TINY = {"hidden": 8, "heads": 2, "layers": 1, "radial": 8}


def test_select_frames_prefers_frames_outside_the_training_range_then_deviation_and_spaces_them():
    deviation = np.array([[0.1, 0.9, 0.8, 0.2, 0.3], [0.5, 0.4, 0.95, 0.1, 0.7]])
    outside = np.zeros_like(deviation, dtype=bool)
    outside[0, 4] = True
    last = np.array([4, 2])  # run 1 collapsed at frame 2: frames after it are not considered
    assert select_frames(deviation, outside, last, 3, spacing=2) == [(0, 4), (1, 2), (0, 1)]
    assert select_frames(deviation, outside, last, 10, spacing=1) == [(0, 4), (1, 2), (0, 1), (0, 2), (1, 0),
                                                                      (1, 1), (0, 3), (0, 0)]


def test_unknown_oracle_is_a_clear_error():
    with pytest.raises(ConfigError, match="emt, pyscf or module:attribute"):
        make_oracle("dft")
    assert isinstance(make_oracle("ase.calculators.emt:EMT"), EMT)


def test_two_rounds_grow_the_data_with_oracle_labels_and_resume(tmp_path):
    data = write_npz(tmp_path / "train.npz", emt_frames(12, seed=1))
    settings = dict(data=str(data), out=str(tmp_path / "loop"), oracle="emt", rounds=1, members=2, time_budget=None,
                    epochs=1, model=TINY, n_valid=2, runs=2, md_time_ps=0.1, select=2, spacing=1, calibration=2,
                    dtype="float64", energy_ceiling_eV_per_atom=1e9)  # a tiny untrained model's MD goes far up
    lines = []
    (first,) = learn(LearnSettings(**settings), echo=lines.append)
    assert first["data_frames"] == 12 and first["labelled"] == 2 and len(first["members"]) == 2
    offset = json.loads((tmp_path / "loop" / "oracle_offset.json").read_text())
    assert abs(offset["offset_eV"]) < 1e-9  # the data were labelled by the same EMT
    labelled = ase.io.read(tmp_path / "loop" / "round0" / "labelled.extxyz", ":")
    for atoms in labelled:  # the labels are the oracle's, on the selected MD frames (extxyz keeps 1e-8 Å)
        reference = atoms.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-4)

    lines.clear()
    records = learn(LearnSettings(**{**settings, "rounds": 2}), echo=lines.append)  # continues: round 0 is kept
    assert "round 0 (recorded before)" in lines[0] and records[0] == first
    assert records[1]["data_frames"] == 14 and records[1]["round"] == 1
    for member in records[1]["members"]:  # the base data's energy scale, whatever the added frames' energies
        scale = torch.load(member, weights_only=True)["normalization"]["energy_scale"]
        assert scale == pytest.approx(read_dataset(data).energy.std(), rel=1e-12)
        config = json.loads((Path(member).parent / "config.json").read_text())
        assert config["valid_pool"] == 12  # validated on base frames only: the added ones always train
    assert json.loads((tmp_path / "loop" / "rounds" / "round1.json").read_text())["labelled"] == 2

    with pytest.raises(ConfigError, match="other settings \\(select\\)"):
        learn(LearnSettings(**{**settings, "select": 3}))

    start = first["members"]  # round 0 from trained potentials: it trains none
    (again,) = learn(LearnSettings(**{**settings, "out": str(tmp_path / "again"), "start": start}))
    assert again["members"] == start and again["labelled"] == 2
    assert not (tmp_path / "again" / "round0" / "members").exists()
    with pytest.raises(ConfigError, match="at least 2 members, got 1"):
        LearnSettings(**{**settings, "start": start[:1]})

    saved = json.loads((tmp_path / "loop" / "settings.json").read_text())
    del saved["stretch"]  # a loop begun before the setting existed continues, reading it as its default
    (tmp_path / "loop" / "settings.json").write_text(json.dumps(saved))
    assert learn(LearnSettings(**settings))[0] == first

    stretch = {**settings, "out": str(tmp_path / "stretch"), "start": start, "rounds": 2, "stretch": 3, "close": 2}
    records = learn(LearnSettings(**stretch))
    assert (records[0]["labelled"], records[0]["distorted"], records[0]["closed"]) == (2, 3, 2)
    assert records[1]["data_frames"] == 12 + 2 + 3 + 2
    alone = learn(LearnSettings(**{**stretch, "out": str(tmp_path / "alone"), "rounds": 1, "close": 0}))
    assert alone[0]["closed"] == 0  # the angle frames draw from a generator of their own: the bonds' are unchanged
    assert [a.positions.tolist() for a in ase.io.read(tmp_path / "alone" / "round0" / "distorted.extxyz", ":")] == \
        [a.positions.tolist() for a in ase.io.read(tmp_path / "stretch" / "round0" / "distorted.extxyz", ":")]
    distorted = ase.io.read(tmp_path / "stretch" / "round0" / "distorted.extxyz", ":")
    assert all(a.info["oracle_cpu_s"] >= 0 for a in distorted)
    assert records[0]["oracle_cpu_s"] == pytest.approx(sum(a.info["oracle_cpu_s"] for a in distorted + labelled),
                                                       abs=1.0)

    tuned = {**settings, "out": str(tmp_path / "tuned"), "start": start, "rounds": 2, "fine_tune": True}
    records = learn(LearnSettings(**tuned))  # round 1's member k continues round 0's member k
    for k, member in enumerate(records[1]["members"]):
        config = json.loads((Path(member).parent / "config.json").read_text())
        assert (config["init"], config["select"], config["lr"]) == (start[k], "last", FINE_TUNE_LR)
        assert read_checkpoint(member)["training"]["best_epoch"] == 1  # the last, of 1

    ceiling = {**settings, "out": str(tmp_path / "ceiling"), "start": start, "rounds": 2,
               "energy_ceiling_eV_per_atom": -1e9}  # every labelled frame above it: recorded, not trained on
    records = learn(LearnSettings(**ceiling))
    assert records[0]["labelled"] == 2 and records[1]["data_frames"] == 12


def test_outside_training_range_sees_stretched_bonds_and_fused_pairs(tmp_path):
    from sake_md.md.bonds import find_bonds

    frames = emt_frames(6, seed=3)
    data = read_dataset(write_npz(tmp_path / "d.npz", frames))
    bonds = find_bonds(frames[0])
    x = np.stack(data.positions)
    assert not outside_training_range(x, data, bonds).any()
    i, j = bonds[0]
    stretched = x[0].copy()
    stretched[j] = x[0][i] + 1.6 * (x[0][j] - x[0][i])
    fused = x[0].copy()  # two atoms that share no bond, brought within 0.1 Å: every bond keeps its length
    a, b = next((a, b) for a in range(len(fused)) for b in range(a + 1, len(fused)) if {a, b} not in map(set, bonds))
    fused[b] = fused[a] + 0.1 * (fused[b] - fused[a]) / np.linalg.norm(fused[b] - fused[a])
    assert outside_training_range(np.stack([stretched, fused]), data, bonds).tolist() == [True, True]


def test_distorted_frames_move_one_atom_of_one_bond_out_of_the_data_range(tmp_path):
    from sake_md.md.bonds import bond_lengths, find_bonds

    frames = emt_frames(8, seed=4)
    data = read_dataset(write_npz(tmp_path / "d.npz", frames))
    bonds = find_bonds(frames[0])
    x = np.stack(data.positions)
    lengths = bond_lengths(x, bonds)
    out = distorted_frames(data, bonds, 40, np.random.default_rng(0), reach=0.8, compress=0.3)
    assert len(out) == 40
    stretched = 0
    for atoms in out:
        differs = np.abs(x - atoms.positions).max(-1) > 1e-9  # (F, N)
        source = int(differs.sum(1).argmin())
        moved = np.flatnonzero(differs[source])
        assert len(moved) == 1  # one atom moved, the others as in a frame of the data
        new = bond_lengths(atoms.positions, bonds)
        long = (new > lengths.max(0)) & (new <= lengths.max(0) + 0.8)
        short = (new < lengths.min(0)) & (new >= lengths.min(0) - 0.3)
        target = np.flatnonzero((long | short) & (bonds == moved[0]).any(1))
        assert len(target) >= 1  # a bond of the moved atom is out of the data's range, within reach
        i, j = bonds[target[0]]
        assert data.numbers[source][moved[0]] == min(data.numbers[source][i], data.numbers[source][j])  # the lighter
        fixed, mover = atoms.info["distorted_bond"]  # the record names the bond, the moved atom last
        assert mover == moved[0] and sorted((fixed, mover)) in bonds[target].tolist()
        stretched += bool(long[target].any())
    assert 20 <= stretched <= 38  # one in four compressed
    again = distorted_frames(data, bonds, 40, np.random.default_rng(0))
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(out, again, strict=True))


def test_closed_angle_frames_turn_one_atom_about_its_neighbour_closer_than_the_data(tmp_path):
    from sake_md.md.bonds import bond_lengths, find_bonds

    frames = emt_frames(8, seed=5)  # ethanol: C0 O1 C2 H3..H8
    data = read_dataset(write_npz(tmp_path / "d.npz", frames))
    bonds = find_bonds(frames[0])
    angles = bond_angles(bonds)
    assert len(angles) == sum(d * (d - 1) // 2 for d in np.bincount(bonds.ravel()))  # every pair of neighbours
    x = np.stack(data.positions)
    closest = bond_lengths(x, angles[:, [0, 2]]).min(0)
    out = closed_angle_frames(data, bonds, 60, np.random.default_rng(0), reach=0.7, floor=0.5)
    kinds = set()
    for atoms in out:
        differs = np.abs(x - atoms.positions).max(-1) > 1e-9  # (F, N)
        source = int(differs.sum(1).argmin())
        (moved,) = np.flatnonzero(differs[source])  # one atom moved
        pairs = bond_lengths(atoms.positions, angles[:, [0, 2]])
        closed = np.flatnonzero((pairs < closest - 1e-9) & (angles[:, [0, 2]] == moved).any(1))
        assert len(closed) >= 1
        j, i, k = angles[closed[0]]
        other = k if moved == j else j
        assert closest[closed[0]] - 0.7 - 1e-9 <= pairs[closed[0]] and pairs[closed[0]] >= 0.5 - 1e-9
        # turned about the centre: the moved atom keeps its bond, in the plane of the three atoms
        assert np.linalg.norm(atoms.positions[moved] - atoms.positions[i]) == pytest.approx(
            np.linalg.norm(x[source, moved] - x[source, i]))
        normal = np.cross(x[source, moved] - x[source, i], x[source, other] - x[source, i])
        assert (atoms.positions[moved] - x[source, i]) @ normal == pytest.approx(0, abs=1e-9)
        assert data.numbers[source][moved] <= data.numbers[source][other]  # the lighter moves
        assert atoms.info["closed_angle"] == [int(moved), int(i), int(other)]
        kinds.add(tuple(sorted(data.numbers[source][[j, k]])) + (data.numbers[source][i],))
    assert (1, 1, 6) in kinds and len(kinds) >= 4  # every kind is drawn, H–C–H among them
    straight = read_dataset(write_npz(tmp_path / "co2.npz", emt_frames(2, seed=0, molecule="CO2")))
    straight.positions[0] = np.array([[0.0, 0, 0], [0, 0, 1.2], [0, 0, -1.2]])  # O=C=O at exactly 180°
    (bent,) = closed_angle_frames(straight.subset([0]), np.array([[0, 1], [0, 2]]), 1, np.random.default_rng(0))
    assert np.isfinite(bent.positions).all() and bond_lengths(bent.positions, np.array([[1, 2]]))[0] < 2.4
    again = closed_angle_frames(data, bonds, 60, np.random.default_rng(0), reach=0.7, floor=0.5)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(out, again, strict=True))
    only = closed_angle_frames(data, bonds, 12, np.random.default_rng(0), kind="H-C-H")
    assert all(list(data.numbers[0][a.info["closed_angle"]]) == [1, 6, 1] for a in only)
    with pytest.raises(ValueError, match="no H-N-H angle in this molecule.*H-C-H"):
        closed_angle_frames(data, bonds, 1, np.random.default_rng(0), kind="H-N-H")
    with pytest.raises(ValueError, match="three element symbols"):
        closed_angle_frames(data, bonds, 1, np.random.default_rng(0), kind="HCH")


def test_learn_command(tmp_path):
    from click.testing import CliRunner

    from sake_md.cli import main

    data = write_npz(tmp_path / "train.npz", emt_frames(10, seed=2))
    args = ["learn", "--data", str(data), "--out", str(tmp_path / "loop"), "--oracle", "emt", "--rounds", "1",
            "--members", "2", "--epochs", "1", "--runs", "1", "--md-time", "50fs", "--select", "1",
            "--calibration", "1", "--valid", "2", "--hidden", "8", "--heads", "2", "--layers", "1", "--radial", "8",
            "--stretch", "2", "--close", "1", "--fine-tune"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "round 0: 10 training frames" in result.output and "1 frames labelled" in result.output
    assert "and 2 distorted" in result.output and "and 1 with an angle closed" in result.output
    assert len(ase.io.read(tmp_path / "loop" / "round0" / "distorted.extxyz", ":")) == 2
    assert json.loads((tmp_path / "loop" / "settings.json").read_text())["fine_tune"] is True
