"""``sake-md learn``: an uncertainty-driven data loop for molecules (the data lever of MD stability).

One round, each stage resumable (its output is its record; a killed round continues where it stopped):

1. **data**: the training file plus every frame labelled so far, as one extxyz in eV and Å;
2. **train**: a committee of ``members`` potentials (seeds 0..M-1, the CPU recipe) on it; round 0 may
   start from trained potentials instead (``start``: checkpoints trained on the same training file); with
   ``fine_tune`` each later member continues the previous round's member instead of starting from scratch;
3. **md**: the stability protocol (Nosé–Hoover at ``temperature_K``, 0.5 fs) with member 0, ``runs`` runs of
   ``md_time_ps`` from frames of the training file, saved in segments;
4. **select**: along every run up to its first collapsed frame (included: the geometry the potential
   could not hold), the committee's largest per-atom force deviation; frames outside the training geometries (a
   bond longer, or any pair closer, than in every training frame) come first, then the largest deviations,
   at least ``spacing`` frames apart within a run, ``select`` frames in all;
5. **label**: the oracle (any ASE calculator) gives energies and forces (the next round's data leaves out those
   more than ``energy_ceiling_eV_per_atom`` above the training file's highest energy); its energies are shifted by the
   constant offset to the training data's level of theory, measured once on ``calibration`` frames of the
   training file (a different code at the same level of theory differs by a constant; for PySCF against rMD17
   see ``md_runs/stability/oracle_check_ethanol.json``);
6. **distort** (``stretch`` frames a round, optional): frames of the training file with one bond stretched past
   the longest length the file holds for it, or compressed below its shortest (``distorted_frames``), labelled the
   same way: where MD collapses, the potential extrapolates from no data (ethanol's C–H energy profiles,
   ``md_runs/stability/bond_scan.py``), and short MD seldom visits it before it fails;
7. **close** (``close`` frames a round, optional): frames of the training file with one angle closed, two atoms
   bonded to one atom brought closer than the file ever has them (``closed_angle_frames``), labelled the same way:
   bond distortions never close an angle, and MD fused malonaldehyde's geminal hydrogens where nothing had.

``rounds/round<r>.json`` records each round: data size, member test errors, collapses, deviations, frames
labelled, oracle CPU seconds. Oracles: ``emt`` (ASE's EMT, for tests), ``pyscf`` (PBE/def2-SVP, rMD17's
level of theory; ``sake_md.oracles``) or ``module:attribute`` (a callable returning an ASE calculator).
"""

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .console import notify
from .data import Dataset, read_dataset
from .errors import ConfigError
from .files import atomic_write

__all__ = ["LearnSettings", "closed_angle_frames", "distorted_frames", "learn", "make_oracle", "oracle_offset",
           "select_frames"]


@dataclass
class LearnSettings:
    """Every setting of a loop; ``settings.json`` in ``out`` holds exactly this (a resumed loop must match)."""

    data: str
    out: str
    oracle: str = "pyscf"
    test: str | None = None
    rounds: int = 3
    members: int = 3
    time_budget: float | None = 1800.0  # seconds per member and round (the shipped recipe's 30 minutes)
    epochs: int | None = None
    start: list[str] = field(default_factory=list)  # checkpoints that stand in for round 0's members
    model: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"variant": "sake-dot"}
    n_valid: int = 50
    runs: int = 5
    md_time_ps: float = 10.0
    temperature_K: float = 500.0
    select: int = 50
    spacing: int = 10  # frames (of 0.05 ps) between two frames picked from one run
    calibration: int = 5
    # a labelled frame more than this above the training file's highest energy (eV per atom) stays in the record
    # (labelled.extxyz) but out of the training data: atoms fused deep into the repulsive wall, whose labels teach
    # no more than the wall's onset does (ethanol: +12 to +180 eV) and would distort the fit
    energy_ceiling_eV_per_atom: float = 1.0
    stretch: int = 0  # frames a round with one bond stretched or compressed out of the data's range
    close: int = 0  # frames a round with one angle closed: two atoms bonded to a third closer than in the data
    # round r >= 1: member k fine-tunes the previous round's member k (train --init, peak LR ``FINE_TUNE_LR``, the last
    # epoch kept) instead of training from scratch: the new frames cost less accuracy (measured on ethanol in
    # md_runs/stability/README.md, arm 2c)
    fine_tune: bool = False
    seed: int = 0
    dtype: str = "float32"
    threads: int | None = 1

    def __post_init__(self):
        if (self.time_budget is None) == (self.epochs is None):
            raise ConfigError("give exactly one of time_budget and epochs")
        if self.members < 2 or len(self.start) == 1:
            raise ConfigError(f"a committee needs at least 2 members, got {len(self.start) or self.members}")
        if min(self.rounds, self.runs, self.select, self.calibration) < 1 or min(self.stretch, self.close) < 0:
            raise ConfigError("rounds, runs, select and calibration must be at least 1, stretch and close at least 0")


FINE_TUNE_LR = 3e-4  # peak learning rate of a fine-tuning member (the recipe's is 1e-3)


def fine_tuning(start: Path) -> dict:
    """TrainConfig settings that fine-tune ``start``: its model, a lower peak learning rate, the last epoch kept
    (validation on base frames alone would keep the start model, unchanged, at epoch 1)."""
    from .checkpoint import read_checkpoint

    return {"init": str(start), "model": read_checkpoint(start)["config"], "lr": FINE_TUNE_LR, "select": "last"}


def make_oracle(spec: str):
    """An ASE calculator from ``spec``: "emt", "pyscf" or "module:attribute" (called with no arguments)."""
    if spec == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if spec == "pyscf":
        from .oracles import PySCFCalculator

        return PySCFCalculator()
    module, sep, attribute = spec.partition(":")
    if not sep:
        raise ConfigError(f"unknown oracle {spec!r}: emt, pyscf or module:attribute (a callable returning an ASE "
                          "calculator)")
    try:
        return getattr(importlib.import_module(module), attribute)()
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot make the oracle {spec!r}: {type(e).__name__}: {e}") from None


def label(frames: list, oracle, offset: float = 0.0) -> tuple[list, float]:
    """Energies (eV, + ``offset``) and forces (eV/Å) of ``frames`` (ASE Atoms) by the oracle; (frames, CPU s).
    A frame the oracle cannot label (``OracleFailed``: an SCF that does not converge) is left out."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from .oracles import OracleFailed

    start, labelled = time.process_time(), []
    for atoms in frames:
        atoms, began = atoms.copy(), time.process_time()
        atoms.calc = oracle
        try:
            energy, forces = atoms.get_potential_energy() + offset, atoms.get_forces()
        except OracleFailed as e:
            notify(f"learn: a frame left unlabelled: {e}")
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["oracle_cpu_s"] = time.process_time() - began  # kept in the extxyz: a file's cost
        labelled.append(atoms)
    return labelled, time.process_time() - start


def oracle_offset(path: Path, data: Dataset, oracle, count: int, seed: int = 0) -> float:
    """The oracle's constant offset to ``data``'s labels (eV): read from ``path``, or measured on ``count`` frames
    drawn with ``seed`` (the mean of E_data − E_oracle; record: frames, offset, spread, CPU s) and written there.
    ``oracle``: a callable returning the calculator, called only when a measurement is needed."""
    if not path.exists():
        frames = sorted(np.random.default_rng(seed).choice(len(data), min(count, len(data)), replace=False))
        labelled, cpu = label(data.subset(frames).to_atoms(), oracle())
        diff = np.array([data.energy[k] - a.get_potential_energy() for k, a in zip(frames, labelled, strict=True)])
        record = {"frames": [int(k) for k in frames], "offset_eV": float(diff.mean()),
                  "std_eV": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0, "cpu_s": cpu}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return json.loads(path.read_text())["offset_eV"]


def pair_distances(positions: np.ndarray) -> np.ndarray:
    """Distances of every pair i < j. Shape (..., N, 3) -> (..., N(N-1)/2)."""
    i, j = np.triu_indices(positions.shape[-2], 1)
    return np.linalg.norm(positions[..., i, :] - positions[..., j, :], axis=-1)


def outside_training_range(positions: np.ndarray, data: Dataset, bonds: np.ndarray) -> np.ndarray:
    """Whether a frame leaves the geometries of ``data`` (one molecule): a bond longer than in any training frame,
    or any pair, bonded or not, closer (two geminal hydrogens fused: a bond criterion does not see it).
    Shape (..., N, 3) -> (...)."""
    from .md.bonds import bond_lengths

    train = np.stack(data.positions)
    longest = bond_lengths(train, bonds).max(0)
    closest = pair_distances(train).min(0)
    return (bond_lengths(positions, bonds) > longest).any(-1) | (pair_distances(positions) < closest).any(-1)


def select_frames(deviation: np.ndarray, outside: np.ndarray, last: np.ndarray, count: int,
                  spacing: int) -> list[tuple[int, int]]:
    """(run, frame) pairs to label. Shapes: deviation, outside (R, F) — the committee's largest force deviation and
    whether the frame leaves the training geometries; last (R,) the last frame to consider in each run (its first
    collapsed frame, or the end). Out-of-range frames first, then by deviation; ``spacing`` frames apart."""
    R, F = deviation.shape
    keep = np.arange(F)[None, :] <= last[:, None]
    order = sorted(((run, k) for run in range(R) for k in range(F) if keep[run, k]),
                   key=lambda rk: (not outside[rk], -deviation[rk]))
    chosen: list[tuple[int, int]] = []
    for run, k in order:
        if len(chosen) == count:
            break
        if all(r != run or abs(k - j) >= spacing for r, j in chosen):
            chosen.append((run, k))
    return chosen


def distorted_frames(data: Dataset, bonds: np.ndarray, count: int, rng: np.random.Generator, reach: float = 0.8,
                     compress: float = 0.3) -> list:
    """``count`` frames of ``data`` (one molecule; ASE Atoms), each with one random bond of ``bonds`` (M, 2)
    stretched past the longest length it has in ``data`` by up to ``reach`` Å, or, one frame in four, compressed
    below its shortest by up to ``compress`` Å. The lighter atom moves along the bond (for C–H the hydrogen), the
    others stay. ``reach`` covers the collapse criterion (0.5 Å past the mean length) with room to spare.
    ``info["distorted_bond"]``: [i, j], j the atom that moved."""
    from ase import Atoms

    from .md.bonds import bond_lengths

    lengths = bond_lengths(np.stack(data.positions), bonds)  # (F, M)
    longest, shortest = lengths.max(0), lengths.min(0)
    frames = []
    for _ in range(count):
        f, m = int(rng.integers(len(data))), int(rng.integers(len(bonds)))
        i, j = bonds[m]
        if data.numbers[f][i] < data.numbers[f][j]:
            i, j = j, i  # j, the one that moves, is the lighter
        length = (rng.uniform(shortest[m] - compress, shortest[m]) if rng.random() < 0.25 else
                  rng.uniform(longest[m], longest[m] + reach))
        positions = np.array(data.positions[f], dtype=np.float64)
        axis = positions[j] - positions[i]
        positions[j] = positions[i] + axis * (length / np.linalg.norm(axis))
        frames.append(Atoms(numbers=data.numbers[f], positions=positions,
                            info={"distorted_bond": [int(i), int(j)]}))  # (fixed, moved)
    return frames


def bond_angles(bonds: np.ndarray) -> np.ndarray:
    """Every angle (j, i, k) of the bond graph, j < k both bonded to i. Shape: bonds (M, 2) -> (K, 3)."""
    neighbours: dict[int, set[int]] = {}
    for a, b in bonds.tolist():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    angles = [(j, i, k) for i in sorted(neighbours) for j in sorted(neighbours[i]) for k in sorted(neighbours[i])
              if j < k]
    return np.array(angles, dtype=np.int64).reshape(-1, 3)


def closed_angle_frames(data: Dataset, bonds: np.ndarray, count: int, rng: np.random.Generator, reach: float = 0.7,
                        floor: float = 0.5, kind: str | None = None) -> list:
    """``count`` frames of ``data`` (one molecule; ASE Atoms), each with one angle j–i–k of the bond graph ``bonds``
    (M, 2) closed: the lighter of j and k (either, for two of one element) turns about i in the plane of the three,
    its bond length kept, until j–k is shorter than in any frame of ``data`` by up to ``reach`` Å (never below
    ``floor`` Å). The kinds of angle (their elements) take turns, then an angle of the kind is drawn: a kind with few
    instances (malonaldehyde's one H–C–H) is covered as often as a common one. ``kind``: only angles of that kind,
    written end–centre–end in symbols (``"H-C-H"``: 3 of aspirin's 32 angles, its methyl's).
    ``info["closed_angle"]``: [j, i, k], j the atom that moved."""
    from ase import Atoms
    from ase.data import atomic_numbers, chemical_symbols

    from .md.bonds import bond_lengths

    angles = bond_angles(bonds)
    numbers = np.asarray(data.numbers[0])
    closest = bond_lengths(np.stack(data.positions), angles[:, [0, 2]]).min(0)  # (K,) j–k, the data's shortest
    kinds: dict[tuple, list[int]] = {}
    for a, (j, i, k) in enumerate(angles.tolist()):
        kinds.setdefault((*sorted((int(numbers[j]), int(numbers[k]))), int(numbers[i])), []).append(a)
    if kind is not None:
        try:
            j_, i_, k_ = (atomic_numbers[symbol] for symbol in kind.split("-"))
        except (KeyError, ValueError):
            raise ValueError(f"angle kind {kind!r}: expected three element symbols, end-centre-end, "
                             "e.g. 'H-C-H'") from None
        wanted = (*sorted((j_, k_)), i_)
        if wanted not in kinds:
            have = ", ".join(sorted("-".join(chemical_symbols[z] for z in (a, c, b)) for a, b, c in kinds))
            raise ValueError(f"no {kind} angle in this molecule (its kinds: {have})")
        kinds = {wanted: kinds[wanted]}
    kinds_list = [kinds[key] for key in sorted(kinds)]
    frames = []
    for n in range(count):
        f = int(rng.integers(len(data)))
        members = kinds_list[n % len(kinds_list)]
        a = members[int(rng.integers(len(members)))]
        j, i, k = angles[a]
        if numbers[j] > numbers[k] or (numbers[j] == numbers[k] and rng.random() < 0.5):
            j, k = k, j  # j, the one that moves, is the lighter
        positions = np.array(data.positions[f], dtype=np.float64)
        r_j, r_k = (np.linalg.norm(positions[v] - positions[i]) for v in (j, k))
        target = max(rng.uniform(closest[a] - reach, closest[a]), floor, abs(r_j - r_k) + 0.05)
        frames.append(Atoms(numbers=data.numbers[f], positions=turned(positions, j, i, k, target),
                            info={"closed_angle": [int(j), int(i), int(k)]}))  # (moved, centre, approached)
    return frames


def turned(positions: np.ndarray, j: int, i: int, k: int, distance: float) -> np.ndarray:
    """``positions`` (N, 3) with atom j turned about atom i, in the plane of j, i and k and at its distance from i,
    until it is ``distance`` Å from k (at least |r_ij − r_ik|); the other atoms stay. Returns a new array."""
    out = np.array(positions, dtype=np.float64)
    arm, other = out[j] - out[i], out[k] - out[i]
    r_j, r_k = np.linalg.norm(arm), np.linalg.norm(other)
    # law of cosines: the angle at i that puts j at ``distance`` from k
    cos = np.clip((r_j**2 + r_k**2 - distance**2) / (2 * r_j * r_k), -1.0, 1.0)
    u = other / r_k
    w = arm - (arm @ u) * u
    if np.linalg.norm(w) < 1e-6 * r_j:  # a straight angle has no plane: any direction across the bond
        w = np.cross(u, np.eye(3)[int(np.argmin(np.abs(u)))])
    out[j] = out[i] + r_j * (cos * u + np.sqrt(1 - cos**2) * w / np.linalg.norm(w))
    return out


class Loop:
    """The rounds of one ``learn`` run in ``settings.out``."""

    def __init__(self, settings: LearnSettings):
        self.s = settings
        self.out = Path(settings.out)
        self.base = read_dataset(settings.data)
        self.oracle = None

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def check_settings(self) -> None:
        path = self.out / "settings.json"
        mine = asdict(self.s)
        if path.exists():
            # a setting added since the loop began reads as its default
            saved = {**asdict(LearnSettings(data=self.s.data, out=self.s.out)), **json.loads(path.read_text())}
            changed = sorted(k for k in mine if k != "rounds" and saved[k] != mine[k])
            if changed:
                raise ConfigError(f"{self.out} holds a loop with other settings ({', '.join(changed)}); choose "
                                  "another --out, or the same settings to continue it")
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(mine, indent=1) + "\n"))

    def round_dir(self, r: int) -> Path:
        return self.out / f"round{r}"

    def get_oracle(self):
        if self.oracle is None:
            self.oracle = make_oracle(self.s.oracle)
        return self.oracle

    # ---- stages ---------------------------------------------------------------------------------------
    def offset(self) -> float:
        """The oracle's constant offset to the training data (eV), measured once."""
        return oracle_offset(self.out / "oracle_offset.json", self.base, self.get_oracle, self.s.calibration,
                             self.s.seed)

    def data_file(self, r: int) -> Path:
        """Round r's training file: the base data and the frames labelled (and distorted) in rounds 0..r-1, those
        above the energy ceiling left out."""
        import ase.io

        path = self.round_dir(r) / "data.extxyz"
        if not path.exists():
            frames = self.base.to_atoms()
            ceiling = self.base.energy.max()
            for k in range(r):
                for added in (self.round_dir(k) / f"{name}.extxyz" for name in ("labelled", "distorted", "closed")):
                    frames += [a for a in (ase.io.read(added, ":") if added.exists() and added.stat().st_size else [])
                               if a.get_potential_energy() - ceiling <= self.s.energy_ceiling_eV_per_atom * len(a)]
            atomic_write(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
        return path

    def train_members(self, r: int, data: Path) -> list[Path]:
        from .model import ModelConfig
        from .objective import TrainConfig
        from .train import read_config, train

        if r == 0 and self.s.start:
            return self.members_of(0)
        best, previous = [], self.members_of(r - 1) if self.s.fine_tune and r > 0 else []
        for k in range(self.s.members):
            out = self.round_dir(r) / "members" / f"seed{k}"
            if (out / "best.pt").exists() and not (out / "last.pt").exists():
                best.append(out / "best.pt")
                continue
            resume = (out / "last.pt").exists()
            settings = dict(model=ModelConfig(**self.s.model).to_dict(),
                            energy_scale=float(self.base.energy.std()))  # the base data's, not the high frames'
            if previous:
                settings.update(fine_tuning(previous[k % len(previous)]))
            cfg = read_config(out) if resume else TrainConfig.preset(
                "cpu", str(data), str(out), time_budget=self.s.time_budget, epochs=self.s.epochs,
                n_valid=self.s.n_valid, seed=k,
                # validated on base frames only (the base file's split): a few distorted frames, fit worst of all,
                # would decide which epoch is best (measured: epoch 62 of 127, test force MAE 24.8 meV/Å)
                valid_pool=len(self.base),
                test=self.s.test, dtype=self.s.dtype, threads=self.s.threads, progress=False, **settings)
            best.append(train(cfg, resume=resume))
            (out / "last.pt").unlink()  # the member is finished: best.pt is what the loop uses
        return best

    def members_of(self, r: int) -> list[Path]:
        """Round r's members (round 0 from --start: those checkpoints), as trained."""
        if r == 0 and self.s.start:
            return [Path(p) for p in self.s.start]
        return [self.round_dir(r) / "members" / f"seed{k}" / "best.pt" for k in range(self.s.members)]

    def run_md(self, r: int, model: Path):
        from .checkpoint import load_checkpoint
        from .md.reference import MoleculeFrames
        from .md.segments import SegmentedStability, run_segmented
        from .md.stability import StabilityPreset

        preset = StabilityPreset("learn", temperature_K=self.s.temperature_K, time_ps=self.s.md_time_ps,
                                 runs=self.s.runs)
        frames = MoleculeFrames(self.base)
        run = SegmentedStability(load_checkpoint(model), frames, frames, preset, self.s.runs, self.s.seed + r,
                                 name=f"round{r}", compile="auto", expected_calls=preset.steps() + 1)
        run_segmented(run, [self.s.md_time_ps], 1.0, self.round_dir(r) / "md_state.pt")
        return run

    def labelled(self, r: int, name: str, frames) -> list:
        """``round<r>/<name>.extxyz``: ``frames()`` labelled by the oracle, once (a killed round keeps the files
        it finished)."""
        import ase.io

        path = self.round_dir(r) / f"{name}.extxyz"
        if not path.exists():
            done, _ = label(frames(), self.get_oracle(), self.offset())
            atomic_write(path, lambda tmp: ase.io.write(tmp, done, format="extxyz"))
        return ase.io.read(path, ":") if path.stat().st_size else []

    def select_and_label(self, r: int, run, members: list[Path]) -> dict:
        from ase import Atoms

        from .md.early_warning import committee_deviation_along

        positions = run.trajectory_tensor().numpy().astype(np.float64)  # (F, R, N, 3)
        F, R = positions.shape[:2]
        numbers = run.reference.numbers
        collapse = [c[0] // run.preset.frame_interval if c else F - 1 for c in run.monitor.collapse]
        outside = outside_training_range(positions.transpose(1, 0, 2, 3), self.base, run.monitor.criteria[0].bonds)
        frames = [Atoms(numbers=numbers, positions=positions[k, b]) for b in range(R) for k in range(F)]
        deviation = committee_deviation_along(frames, [str(m) for m in members]).reshape(R, F)
        chosen = select_frames(deviation, outside, np.array(collapse), self.s.select, self.s.spacing)
        labelled = self.labelled(r, "labelled", lambda: [Atoms(numbers=numbers, positions=positions[k, b])
                                                          for b, k in chosen])
        rng = np.random.default_rng([self.s.seed, r])
        distorted = self.labelled(r, "distorted", lambda: distorted_frames(
            self.base, run.monitor.criteria[0].bonds, self.s.stretch, rng)) if self.s.stretch else []
        # a generator of its own: a loop begun without ``close`` distorts the same frames with it
        closed = self.labelled(r, "closed", lambda: closed_angle_frames(
            self.base, run.monitor.criteria[0].bonds, self.s.close, np.random.default_rng([self.s.seed, r, 1]))
        ) if self.s.close else []
        cpu = sum(a.info.get("oracle_cpu_s", 0.0) for a in labelled + distorted + closed)
        return {"selected": [[int(b), int(k)] for b, k in chosen], "labelled": len(labelled),
                "distorted": len(distorted), "closed": len(closed), "oracle_cpu_s": cpu,
                "outside_training_range": int(sum(outside[b, k] for b, k in chosen)),
                "deviation_selected_eV_A": [float(deviation[b, k]) for b, k in chosen],
                "deviation_median_eV_A": float(np.median(deviation)),
                "collapses": sum(c is not None for c in run.monitor.collapse),
                "collapse_ps": [None if c is None else c[0] * run.preset.timestep_fs / 1000 for c in
                                run.monitor.collapse]}

    def round(self, r: int) -> dict:
        record_path = self.out / "rounds" / f"round{r}.json"
        if record_path.exists():
            return json.loads(record_path.read_text())
        start = time.process_time()
        notify(f"learn: round {r}: data")
        data = self.data_file(r)
        frames = len(read_dataset(data))
        notify(f"learn: round {r}: " + ("the given committee" if r == 0 and self.s.start else
                                        f"training {self.s.members} members on {frames} frames"))
        members = self.train_members(r, data)
        notify(f"learn: round {r}: {self.s.runs} × {self.s.md_time_ps:g} ps of MD at {self.s.temperature_K:g} K")
        run = self.run_md(r, members[0])
        notify(f"learn: round {r}: selecting and labelling {self.s.select} frames with {self.s.oracle}")
        result = self.select_and_label(r, run, members)
        from .checkpoint import read_checkpoint

        tests = [(read_checkpoint(m).get("metrics") or {}).get("test") for m in members]
        record = {"round": r, "data_frames": frames, "members": [str(m) for m in members],
                  "member_test_force_mae_meV_A": [t["force_mae_meV_A"]["value"] if t else None for t in tests],
                  **result, "cpu_s": time.process_time() - start}
        atomic_write(record_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
        return record


def learn(settings: LearnSettings, echo=print) -> list[dict]:
    """Run (or continue) the loop; returns every round's record."""
    loop = Loop(settings)
    loop.out.mkdir(parents=True, exist_ok=True)
    loop.check_settings()
    records = []
    for r in range(settings.rounds):
        done = (loop.out / "rounds" / f"round{r}.json").exists()
        record = loop.round(r)
        records.append(record)
        echo(f"round {r}{' (recorded before)' if done else ''}: {record['data_frames']} training frames, "
             f"{record['collapses']}/{settings.runs} runs collapsed, {record['labelled']} frames labelled "
             f"({record['outside_training_range']} outside the training geometries)"
             + (f" and {record['distorted']} distorted" if record.get("distorted") else "")
             + (f" and {record['closed']} with an angle closed" if record.get("closed") else "")
             + f", oracle {record['oracle_cpu_s']:.0f} CPU-s")
    return records
