"""Precompiled potentials (AOTInductor, like ``nequip-compile``): the traced energy+forces graph of one
potential, exported with ``torch.export`` and compiled ahead of time into a ``.pt2`` package that
loads in a second, without a compiler.

A package is for one device, one dtype and one shape (B, N): batches of up to B molecules of up to N atoms each are
padded to it. It embeds the weights and the normalisation (both inside the graph) and, as AOTInductor metadata, the
species, configuration, dtype, device and shape, so that ``SAKECalculator("x.pt2")`` is the one call that loads it.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn

from .compile import graph_state, notify, trace, use_persistent_cache
from .errors import CheckpointError, CompileError, InputError
from .model import SAKEPotential

__all__ = ["METADATA_KEY", "FORMAT", "export_package", "export_for_atoms", "is_package", "PackagedPotential"]

METADATA_KEY = "sake_md"
FORMAT = "sake_md.aoti"


class _Exported(nn.Module):
    """The traced graph with the weights as buffers, so that ``torch.export`` packages them."""

    def __init__(self, graph: torch.fx.GraphModule, state: dict[str, torch.Tensor]):
        super().__init__()
        self.graph = graph
        self.names = [name.replace(".", "__") for name in state]
        for name, tensor in zip(self.names, state.values(), strict=True):
            self.register_buffer(name, tensor.clone())

    def forward(self, species, positions, mask):
        return self.graph(*(getattr(self, name) for name in self.names), species, positions, mask)


def export_package(potential: SAKEPotential, species, positions, mask, path, verbose: bool = True) -> Path:
    """Trace, export and AOT-compile ``potential`` for the shape of this batch; write the ``.pt2``.
    Shape: species (B, N), positions (B, N, 3) in the potential's dtype and device, mask (B, N)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise InputError(f"the package must be a .pt2 file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    use_persistent_cache()
    potential = potential.eval()
    (B, N), device = species.shape, positions.device
    meta = {"format": FORMAT, "atomic_numbers": list(potential.atomic_numbers),
            "config": potential.config.to_dict(), "variant": potential.config.variant,
            "normalization": {"energy_scale": potential.energy_scale, "energy_shift": potential.energy_shift,
                              "atomic_energies": list(potential.atomic_energies)},
            "dtype": str(potential.dtype).removeprefix("torch."), "device": device.type, "batch": B, "atoms": N,
            "torch_version": torch.__version__}
    notify(f"exporting {potential.config.variant} for {B} × {N} atoms ({meta['dtype']}, {device}) with "
           "AOTInductor: this builds the whole graph in C++ and takes a few minutes on one CPU core", verbose)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pt2")
    try:
        from torch._inductor import aoti_compile_and_package

        graph = trace(potential, species, positions, mask)
        exported = torch.export.export(_Exported(graph, graph_state(potential)), (species, positions, mask),
                                       strict=False)
        aoti_compile_and_package(exported, package_path=str(tmp),
                                 inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(meta)}})
    except Exception as e:  # torch.export, inductor or the C++ toolchain
        tmp.unlink(missing_ok=True)
        first_line = (str(e).strip().splitlines() or [""])[0][:500]
        raise CompileError(f"AOTInductor export failed with torch {torch.__version__}: {type(e).__name__}: "
                           f"{first_line}. Use the checkpoint with compile=True instead.") from e
    tmp.replace(path)
    return path


def export_for_atoms(checkpoint, structure: str, out, batch: int = 1, device="cpu", dtype=None,
                     verbose: bool = True) -> Path:
    """``sake-md compile``: the checkpoint, for batches of ``batch`` molecules of ``structure``'s size
    (``structures.load_structure``: a file ASE reads, an ``ase.build.molecule`` name or an alias)."""
    from .batch import atoms_to_batch
    from .inference import inference_potential
    from .structures import load_structure

    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    potential = inference_potential(checkpoint, device, dtype)
    example = atoms_to_batch([load_structure(structure)] * batch, potential, potential.dtype, potential.device)
    return export_package(potential, example.species, example.positions, example.mask, out, verbose)


def is_package(path) -> bool:
    return isinstance(path, str | os.PathLike) and Path(path).suffix == ".pt2"


class PackagedPotential:
    """A ``.pt2`` written by ``export_package``, called like ``CompiledPotential``.

    ``(species (b, n), positions (b, n, 3), mask (b, n)) -> {"energy" (b,), "energies" (b, n), "forces" (b, n, 3)}``
    for b ≤ B and n ≤ N. Has ``atomic_numbers``, ``species_index``, ``dtype``, ``device``, ``batch`` (B) and
    ``atoms`` (N), which is what batching and the calculator need."""

    cutoff = None  # packages are compiled from dense (molecular) models

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"precompiled potential {path} not found")
        from torch._inductor import aoti_load_package

        try:
            self.runner = aoti_load_package(str(path))
            meta = json.loads(self.runner.get_metadata()[METADATA_KEY])
        except Exception as e:  # a foreign or broken archive, or one built by another torch
            raise CheckpointError(f"{path} is not a sake_md precompiled potential that this torch "
                                  f"{torch.__version__} can load ({type(e).__name__}: {e})") from e
        self.path, self.meta = path, meta
        self.atomic_numbers = list(meta["atomic_numbers"])
        self.species_index = torch.full((119,), -1, dtype=torch.long)
        self.species_index[torch.tensor(self.atomic_numbers)] = torch.arange(len(self.atomic_numbers))
        self.dtype, self.device = getattr(torch, meta["dtype"]), torch.device(meta["device"])
        self.batch, self.atoms = int(meta["batch"]), int(meta["atoms"])

    def __call__(self, species, positions, mask) -> dict:
        b, n = species.shape
        if b > self.batch or n > self.atoms:
            raise InputError(f"{self.path} was compiled for batches of up to {self.batch} molecules of up to "
                             f"{self.atoms} atoms; got {b} of {n}. Compile one for this size with "
                             "`sake-md compile`, or use the checkpoint with compile=True")
        species, positions, mask = _pad(species, positions.detach().to(self.dtype), mask, self.batch, self.atoms)
        energy, energies, forces = self.runner(species.to(self.device), positions.to(self.device), mask.to(self.device))
        return {"energy": energy[:b], "energies": energies[:b, :n], "forces": forces[:b, :n]}


def _pad(species, positions, mask, B: int, N: int):
    """Pad atoms (masked out) to N and molecules (copies of the first: no empty molecule, no 1/0) to B."""
    b, n = species.shape
    pad_atoms = (0, N - n)
    species, mask = nn.functional.pad(species, pad_atoms), nn.functional.pad(mask, pad_atoms)
    positions = nn.functional.pad(positions, (0, 0, *pad_atoms))
    if b < B:
        rows = torch.zeros(B, dtype=torch.long, device=species.device)
        rows[:b] = torch.arange(b, device=species.device)
        species, positions, mask = species[rows], positions[rows], mask[rows]
    return species.contiguous(), positions.contiguous(), mask.contiguous()
