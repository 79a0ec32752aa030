"""Labelled structures for training and evaluation: readers, one in-memory dataset type, batches.

Readers (``read_dataset`` dispatches on the file name):

* rMD17 / sGDML ``.npz``: keys ``nuclear_charges, coords, energies, forces`` or ``z, R, E, F``;
  kcal/mol and Å unless told otherwise (sGDML's ``e_unit``/``r_unit`` keys are honoured).
* extended XYZ (``.xyz``, ``.extxyz``): energy and forces under configurable keys, in ``atoms.info`` /
  ``atoms.arrays`` or in the SinglePointCalculator ASE attaches; eV and Å unless told otherwise.
* ASE databases (``.db``, ``.json``, ``.aselmdb``): the row's energy/forces, key-value pairs or data; eV and Å.

Everything is converted to eV, Å and eV/Å in ``convert_units`` (the one place) and checked by
``validate`` before any training starts; bad data raises ``DataError`` naming the file and frame.
``labelled=False`` (MD reference frames, which need positions only) reads frames without energy or
force labels too, ``labelled="energy"`` (evaluation) frames without forces; missing labels are NaN.
"""

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batch import Batch, collate
from .errors import DataError, InputError
from .neighbours import check_cell
from .units import energy_factor, length_factor

__all__ = ["NPZ_KEYS", "EXTXYZ_SUFFIXES", "DB_SUFFIXES", "Dataset", "DataSource", "as_source", "composition",
           "convert_units", "read_dataset", "read_npz", "read_extxyz", "read_ase_db", "frames_to_dataset", "validate",
           "split", "LabelledBatch", "batches", "labelled_batch", "shuffled_order"]

NPZ_KEYS = {"rmd17": ("nuclear_charges", "coords", "energies", "forces"), "sgdml": ("z", "R", "E", "F")}
EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
DB_SUFFIXES = (".db", ".json", ".aselmdb")


@dataclass
class Dataset:
    """Frames of one molecule or of mixed sizes, in eV, Å and eV/Å.

    Per frame m with N_m atoms: numbers[m] (N_m,) int, positions[m] (N_m, 3), forces[m] (N_m, 3); energy (M,) float64
    total energies. Periodic data (extxyz with a lattice, ASE db rows with pbc) also have cells[m] (3, 3) Å, rows the
    lattice vectors, and pbc[m] (3,) bool; both are None otherwise."""

    numbers: list[np.ndarray]
    positions: list[np.ndarray]
    energy: np.ndarray
    forces: list[np.ndarray]
    source: str = ""
    cells: list[np.ndarray] | None = None
    pbc: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.energy)

    @property
    def n_atoms(self) -> np.ndarray:
        """Shape: (M,)."""
        return np.array([len(z) for z in self.numbers])

    @property
    def compositions(self) -> list[tuple[tuple[int, int], ...]]:
        """The sorted distinct compositions of the frames, each as sorted (atomic number, count) pairs."""
        return sorted({composition(z) for z in self.numbers})

    @property
    def species(self) -> list[int]:
        """Sorted unique atomic numbers of all frames."""
        return sorted({int(z) for frame in self.numbers for z in frame})

    def subset(self, indices: Sequence[int], source: str | None = None) -> "Dataset":
        idx = [int(i) for i in indices]
        pick = lambda frames: None if frames is None else [frames[i] for i in idx]  # noqa: E731
        return Dataset(pick(self.numbers), pick(self.positions), self.energy[idx], pick(self.forces),
                       self.source if source is None else source, pick(self.cells), pick(self.pbc))

    def to_atoms(self) -> list:
        """ASE Atoms with the reference energy and forces in a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for m, (z, x, e, f) in enumerate(zip(self.numbers, self.positions, self.energy, self.forces, strict=True)):
            atoms = Atoms(numbers=z, positions=x, cell=None if self.cells is None else self.cells[m],
                          pbc=None if self.pbc is None else self.pbc[m])
            atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f)
            frames.append(atoms)
        return frames


def composition(numbers) -> tuple[tuple[int, int], ...]:
    """A frame's composition as sorted (atomic number, count) pairs."""
    z, counts = np.unique(np.asarray(numbers), return_counts=True)
    return tuple((int(a), int(c)) for a, c in zip(z, counts, strict=True))


def convert_units(dataset: Dataset, energy_unit: str, length_unit: str) -> Dataset:
    """The one unit conversion: energies to eV, positions to Å, forces to eV/Å."""
    try:
        e, l = energy_factor(energy_unit), length_factor(length_unit)
    except ValueError as err:
        raise DataError(f"{dataset.source}: {err}") from None
    if e == 1.0 and l == 1.0:
        return dataset
    return Dataset(dataset.numbers, [x * l for x in dataset.positions], dataset.energy * e,
                   [f * (e / l) for f in dataset.forces], dataset.source,
                   None if dataset.cells is None else [c * l for c in dataset.cells], dataset.pbc)


@dataclass(frozen=True)
class DataSource:
    """A data file and how to read it: the extxyz/db keys of its labels and its units (default: the format's)."""

    path: str
    energy_key: str = "energy"
    forces_key: str = "forces"
    energy_unit: str | None = None
    length_unit: str | None = None

    def read(self, labelled: bool | str = True) -> Dataset:
        return read_dataset(self.path, self.energy_key, self.forces_key, self.energy_unit, self.length_unit,
                            labelled=labelled)


def as_source(data: DataSource | str | Path) -> DataSource:
    """A ``DataSource`` as given, or a path read with the default keys and units."""
    return data if isinstance(data, DataSource) else DataSource(str(data))


def read_dataset(path, energy_key: str = "energy", forces_key: str = "forces", energy_unit: str | None = None,
                 length_unit: str | None = None, labelled: bool = True) -> Dataset:
    """Read, convert to eV/Å and validate a data file (format from the suffix); the units default to the format's
    and ``labelled`` says which labels may be missing (NaN), as in the module docstring."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        data, units = read_npz(path, labelled)
    elif suffix in EXTXYZ_SUFFIXES:
        data, units = read_extxyz(path, energy_key, forces_key, labelled), ("eV", "Å")
    elif suffix in DB_SUFFIXES:
        data, units = read_ase_db(path, energy_key, forces_key, labelled), ("eV", "Å")
    else:
        raise DataError(f"{path}: unknown data format {suffix!r}; expected .npz (rMD17/sGDML), "
                        f"{'/'.join(EXTXYZ_SUFFIXES)} (extended XYZ) or {'/'.join(DB_SUFFIXES)} (ASE database)")
    data = convert_units(data, energy_unit or units[0], length_unit or units[1])
    validate(data, labelled)
    return data


def read_npz(path: Path, labelled: bool = True) -> tuple[Dataset, tuple[str, str]]:
    """rMD17/sGDML arrays -> Dataset in the file's units, and those units (energy, length)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated file is a bad zip
        raise DataError(f"{path} cannot be read as a numpy .npz file ({type(e).__name__}: {e})") from None
    with npz:
        found = list(npz.keys())
        needed = {True: 4, "energy": 3, False: 2}[labelled]  # unlabelled: atomic numbers and coordinates suffice
        names = next((keys for keys in NPZ_KEYS.values() if all(k in found for k in keys[:needed])), None)
        if names is None:
            expected = " or ".join("/".join(k[:needed]) for k in NPZ_KEYS.values())
            raise DataError(f"{path}: missing keys; expected {expected}, found: {', '.join(found) or 'none'}")
        z, coords = np.asarray(npz[names[0]]), np.asarray(npz[names[1]])
        energies, forces = (np.asarray(npz[k]) if k in found else None for k in names[2:])
        units = (_npz_unit(npz, "e_unit", "kcal/mol"), _npz_unit(npz, "r_unit", "Å"))
    coords = _frames_array(path, "coordinates", coords)
    m = len(coords)
    energies = np.full(m, np.nan) if energies is None else energies.reshape(-1) if energies.size == m else energies
    forces = _frames_array(path, "forces", np.full(coords.shape, np.nan) if forces is None else forces)
    if z.ndim != 1 or energies.shape != (m,) or forces.shape != coords.shape or coords.shape[1] != len(z):
        raise DataError(f"{path}: inconsistent shapes: atomic numbers {z.shape}, coordinates {coords.shape}, "
                        f"energies {energies.shape}, forces {forces.shape}; expected (N,), (M, N, 3), (M,), (M, N, 3)")
    return Dataset([z.astype(np.int64)] * m, list(coords.astype(np.float64)), energies.astype(np.float64),
                   list(forces.astype(np.float64)), str(path)), units


def _npz_unit(npz, key: str, default: str) -> str:
    if key not in npz:
        return default
    unit = str(np.asarray(npz[key]).reshape(-1)[0])
    return {"Ang": "Å", "Angstrom": "Å", "ang": "Å"}.get(unit, unit)


def _frames_array(path: Path, what: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"{path}: {what} must have shape (frames, atoms, 3), got {array.shape}")
    return array


def read_extxyz(path: Path, energy_key: str, forces_key: str, labelled: bool = True) -> Dataset:
    import ase.io

    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as e:  # ASE raises many types for malformed text
        raise DataError(f"{path} cannot be read as extended XYZ ({type(e).__name__}: {e})") from None
    return frames_to_dataset(frames, energy_key, forces_key, str(path), labelled)


def read_ase_db(path: Path, energy_key: str, forces_key: str, labelled: bool = True) -> Dataset:
    import ase.db

    try:
        with ase.db.connect(path) as db:
            rows = list(db.select())
    except Exception as e:  # sqlite/json errors
        raise DataError(f"{path} cannot be read as an ASE database ({type(e).__name__}: {e})") from None
    frames = []
    for row in rows:
        atoms = row.toatoms()
        for key in (energy_key, forces_key):
            value = row.get(key, row.data.get(key))
            if value is not None and not (atoms.calc is not None and key in atoms.calc.results):
                target = atoms.info if key == energy_key else atoms.arrays
                target[key] = np.asarray(value) if key == forces_key else value
        frames.append(atoms)
    return frames_to_dataset(frames, energy_key, forces_key, str(path), labelled)


def frames_to_dataset(frames, energy_key: str, forces_key: str, source: str, labelled: bool = True) -> Dataset:
    """ASE Atoms with labels -> Dataset (units unchanged). Labels may sit in info/arrays or in atoms.calc;
    with ``labelled=False`` missing ones are NaN."""
    if not frames:
        raise DataError(f"{source} holds no structures")
    energies, forces = [], []
    for m, atoms in enumerate(frames):
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get(energy_key, results.get(energy_key))
        force = atoms.arrays.get(forces_key, results.get(forces_key))
        if labelled is not True:
            energy = np.nan if energy is None and not labelled else energy
            force = np.full((len(atoms), 3), np.nan) if force is None else force
        for key, value, where in ((energy_key, energy, atoms.info), (forces_key, force, atoms.arrays)):
            if value is None:
                found = sorted(set(where) | set(results) - {"numbers", "positions"})
                raise DataError(f"{source}: frame {m} has no {key!r} label; found keys: {', '.join(found) or 'none'}"
                                f" (set the energy/forces key to one of them)")
        try:
            energies.append(float(np.asarray(energy, dtype=np.float64).reshape(())))
        except (TypeError, ValueError):
            raise DataError(f"{source}: frame {m}: {energy_key!r} must be one number, got {energy!r}") from None
        forces.append(np.asarray(force, dtype=np.float64))
    periodic = any(a.pbc.any() for a in frames)
    return Dataset([np.asarray(a.numbers, dtype=np.int64) for a in frames],
                   [np.asarray(a.positions, dtype=np.float64) for a in frames],
                   np.array(energies, dtype=np.float64), forces, source,
                   [a.cell.array.astype(np.float64) for a in frames] if periodic else None,
                   [a.pbc.copy() for a in frames] if periodic else None)


def validate(data: Dataset, labelled: bool = True) -> None:
    """Shapes, atomic numbers and finiteness of every frame (of the labels too, when ``labelled``); the
    first problem raises ``DataError``."""
    if len(data) == 0:
        raise DataError(f"{data.source} holds no frames")
    for m, (z, x, f) in enumerate(zip(data.numbers, data.positions, data.forces, strict=True)):
        n = len(z)
        if n == 0:
            raise DataError(f"{data.source}: frame {m} has no atoms")
        if x.shape != (n, 3) or f.shape != (n, 3):
            raise DataError(f"{data.source}: frame {m}: inconsistent shapes: {n} atomic numbers, positions "
                            f"{x.shape}, forces {f.shape}; expected ({n}, 3) for both")
        if z.min() < 1 or z.max() > 118:
            raise DataError(f"{data.source}: frame {m} has invalid atomic numbers {sorted(set(z.tolist()))}")
        for what, values, checked in (("positions", x, True), ("force labels", f, labelled is True)):
            if checked and not np.isfinite(values).all():
                raise DataError(f"{data.source}: frame {m} has non-finite {what}")
        if data.pbc is not None and data.pbc[m].any():
            try:
                check_cell(data.cells[m], data.pbc[m], f"frame {m}")
            except InputError as e:
                raise DataError(f"{data.source}: {e}") from None
    bad = np.flatnonzero(~np.isfinite(data.energy))
    if labelled and bad.size:
        raise DataError(f"{data.source}: frame {bad[0]} has a non-finite energy label "
                        f"({bad.size} frame(s) in all: {bad[:10].tolist()})")


def split(data: Dataset, n_valid: int, seed: int = 0, pool: int | None = None) -> tuple[Dataset, Dataset]:
    """Random train/validation split of one file. Returns (train, valid). ``pool``: validation frames come from the
    first ``pool`` frames only, the rest always train (the data loop's added frames; then a grown file keeps the
    validation frames of its base file)."""
    pool = len(data) if pool is None else pool
    if pool > len(data):
        raise DataError(f"{data.source}: the validation pool is the first {pool} frames, but the file has {len(data)}")
    if not (0 < n_valid <= pool and n_valid < len(data)):
        raise DataError(f"{data.source}: cannot hold out {n_valid} of {min(pool, len(data))} frames for validation")
    valid = np.sort(np.random.default_rng(seed).permutation(pool)[:n_valid])
    return (data.subset(np.setdiff1d(np.arange(len(data)), valid), f"{data.source} (train split)"),
            data.subset(valid, f"{data.source} (validation split)"))


@dataclass
class LabelledBatch:
    """A padded batch with its labels: energy (B,) float64 eV, forces (B, N, 3) model dtype eV/Å."""

    batch: Batch
    energy: torch.Tensor
    forces: torch.Tensor
    indices: np.ndarray


def batches(data: Dataset, batch_size: int, species_index: torch.Tensor, dtype=torch.float32, device="cpu",
            order: Sequence[int] | None = None) -> Iterator[LabelledBatch]:
    """Padded batches of ``data`` in ``order`` (default: file order); the last one may be smaller."""
    order = np.arange(len(data)) if order is None else np.asarray(order)
    for start in range(0, len(order), batch_size):
        yield labelled_batch(data, order[start:start + batch_size], species_index, dtype, device)


def labelled_batch(data: Dataset, indices: np.ndarray, species_index: torch.Tensor, dtype=torch.float32,
                   device="cpu") -> LabelledBatch:
    frames = data.subset(indices)
    batch = collate(frames.numbers, frames.positions, species_index, dtype, device, frames.cells, frames.pbc)
    forces = np.zeros(tuple(batch.positions.shape), dtype=np.float64)
    for b, (z, f) in enumerate(zip(frames.numbers, frames.forces, strict=True)):
        forces[b, :len(z)] = f
    energy = torch.from_numpy(frames.energy).to(device)
    return LabelledBatch(batch, energy, torch.from_numpy(forces).to(device=device, dtype=dtype), np.asarray(indices))


def shuffled_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The frame order of one epoch: a function of (seed, epoch) only, so a resumed run repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(n)
