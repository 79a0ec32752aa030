"""Checkpoints are data, not pickles: one ``.pt`` file that ``torch.load(weights_only=True)`` reads,
holding the format version, the configuration, the species, the normalisation and the state dict.

Keys: format, format_version, sake_md_version, variant, config, atomic_numbers,
normalization {energy_scale, energy_shift, atomic_energies}, units, dtype, training, metrics,
state_dict, and optionally extra (e.g. optimiser state of a training run).

Versions: 1 stored the maps that read h̃ with the reference's input order f·K + k; 2 stores them
head-major (k·H + f), the order the layer computes in. Older files are migrated on reading.
The sparse mode adds ``cutoff`` and ``cutoff_width`` to ``config`` (absent: dense), which needed no new
version: the parameters are the same, and dense checkpoints are written exactly as before.
"""

import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import atomic_write
from .model import ModelConfig, SAKEPotential
from .version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "UNITS", "checkpoint_dict", "atomic_torch_save", "save_checkpoint",
           "read_checkpoint", "head_major", "migrate_v1", "potential_from_dict", "load_checkpoint",
           "describe_checkpoint", "trained_compositions"]

FORMAT = "sake_md.checkpoint"
FORMAT_VERSION = 2
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å"}


def checkpoint_dict(potential: SAKEPotential, training: dict | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "sake_md_version": __version__,
            "variant": potential.config.variant, "config": potential.config.to_dict(),
            "atomic_numbers": list(potential.atomic_numbers),
            "normalization": {"energy_scale": potential.energy_scale, "energy_shift": potential.energy_shift,
                              "atomic_energies": list(potential.atomic_energies)},
            "units": dict(UNITS), "dtype": str(potential.dtype).removeprefix("torch."), "training": training,
            "metrics": metrics, "state_dict": {k: v.detach().cpu() for k, v in potential.state_dict().items()},
            "extra": extra}


def atomic_torch_save(obj, path) -> Path:
    """torch.save to a temporary file, then rename: a killed process leaves the old file or the new one."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path, potential: SAKEPotential, training=None, metrics=None, extra=None) -> Path:
    """Write atomically (``atomic_torch_save``), so a killed process never leaves half a file."""
    return atomic_torch_save(checkpoint_dict(potential, training, metrics, extra), path)


def trained_compositions(meta: dict) -> set:
    """The compositions ((Z, count), ...) of a checkpoint's training data, as recorded (empty when not recorded)."""
    return {tuple(map(tuple, c)) for c in (meta.get("training") or {}).get("compositions") or []}


def read_checkpoint(path) -> dict:
    """Load and validate the raw dictionary, with one clear message per way it can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for foreign or damaged bytes
        with open(path, "rb") as f:
            head = f.read(4)
        if zipfile.is_zipfile(path) or head[:2] == b"PK" or head[:1] == b"\x80":  # a zip or a legacy torch pickle
            raise CheckpointError(f"{path} is corrupted or truncated and cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]})") from e
        raise CheckpointError(f"{path} is not a sake_md checkpoint (not a PyTorch file)") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a sake_md checkpoint (no '{FORMAT}' marker)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written with checkpoint format version {version} (sake_md "
                              f"{data.get('sake_md_version', '?')}); this sake_md {__version__} reads versions up "
                              f"to {FORMAT_VERSION}. Upgrade sake_md to load it.")
    if missing := [k for k in ("config", "atomic_numbers", "normalization", "state_dict") if k not in data]:
        raise CheckpointError(f"{path} is an incomplete sake_md checkpoint: missing {', '.join(missing)}")
    if version == 1:
        data = migrate_v1(data)
    return data


def head_major(weight: torch.Tensor, hidden: int, heads: int) -> torch.Tensor:
    """Permute the input columns of a map that reads h̃ from order f·K + k to k·H + f.
    Shape: (out, H·K) -> (out, K·H)."""
    return weight.reshape(-1, hidden, heads).transpose(1, 2).reshape(weight.shape)


def migrate_v1(data: dict) -> dict:
    """Format 1 -> 2: re-order the inputs of every map that reads h̃ (see ``head_major``), in the
    weights and in a training run's optimiser state (so that ``--resume`` stays exact)."""
    from .spatial import SPATIAL_BLOCKS

    config = data["config"]
    maps = SPATIAL_BLOCKS[config.get("variant", "sake")].h_tilde_maps
    suffixes = tuple(f".spatial.{name}.weight" for name in maps)
    permute = lambda t: head_major(t, config["hidden"], config["heads"])  # noqa: E731
    state = {k: permute(v) if k.endswith(suffixes) else v for k, v in data["state_dict"].items()}
    migrated = {**data, "state_dict": state, "format_version": 2}
    optimizer = (data.get("extra") or {}).get("optimizer")
    if optimizer and suffixes:
        # torch optimisers index parameters by their position in ``named_parameters()``
        names = [n for n, _ in SAKEPotential(data["atomic_numbers"], ModelConfig(**config)).named_parameters()]
        moved = {i for i, n in enumerate(names) if n.endswith(suffixes)}
        opt_state = {i: {k: permute(v) if i in moved and torch.is_tensor(v) and v.dim() == 2 else v
                         for k, v in st.items()} for i, st in optimizer["state"].items()}
        migrated["extra"] = {**data["extra"], "optimizer": {**optimizer, "state": opt_state}}
    return migrated


def potential_from_dict(data: dict, source="checkpoint") -> SAKEPotential:
    norm = data["normalization"]
    potential = SAKEPotential(data["atomic_numbers"], ModelConfig(**data["config"]), norm["energy_scale"],
                              norm["energy_shift"], norm.get("atomic_energies"))
    potential = potential.to(getattr(torch, data.get("dtype", "float32")))
    try:
        potential.load_state_dict(data["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not match the stored configuration: "
                              f"{str(e).splitlines()[0][:300]}") from e
    return potential


def load_checkpoint(path, with_metadata: bool = False):
    """Rebuild the potential from the file alone. Returns the potential, or (potential, data)."""
    data = read_checkpoint(path)
    potential = potential_from_dict(data, str(path)).eval()
    return (potential, data) if with_metadata else potential


def describe_checkpoint(path) -> dict:
    """A readable summary of a checkpoint (for ``sake-md info``)."""
    from ase.data import chemical_symbols

    from .model import count_parameters

    potential, data = load_checkpoint(path, with_metadata=True)
    norm = data["normalization"]
    return {"file": str(path), "format_version": data["format_version"],
            "written_by": f"sake_md {data.get('sake_md_version', '?')}",
            "variant": data.get("variant", data["config"].get("variant")),
            "mode": ("dense: all pairs of each molecule" if potential.cutoff is None else
                     f"sparse: neighbours within {potential.cutoff:g} Å (envelope from "
                     f"{potential.cutoff - potential.config.cutoff_width:g} Å), periodic cells, stress"),
            "parameters": count_parameters(potential), "config": data["config"],
            "species": " ".join(f"{chemical_symbols[z]}({z})" for z in data["atomic_numbers"]),
            "dtype": data.get("dtype"), "units": ", ".join(f"{k} {v}" for k, v in data.get("units", {}).items()),
            "normalization": {"energy_scale (eV)": norm["energy_scale"], "energy_shift (eV)": norm["energy_shift"],
                              "atomic_energies (eV)": norm.get("atomic_energies")},
            "training": data.get("training") or "not recorded", "metrics": data.get("metrics") or "not recorded"}
