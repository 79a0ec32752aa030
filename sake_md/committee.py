"""A committee of SAKE potentials: the members' mean is the prediction, their spread its uncertainty.

Definitions: population statistics over the M members (ddof = 0, as DeePMD-kit's model deviation).

==============  ========  =====================================================  =====
key             shape     definition                                             unit
==============  ========  =====================================================  =====
energy          ()        Ē = mean_m E_m                                         eV
forces          (N, 3)    F̄_i = mean_m F_m,i                                     eV/Å
energy_std      ()        σ_E = sqrt(mean_m (E_m − Ē)²)                          eV
forces_std      (N,)      σ_F,i = sqrt(mean_m |F_m,i − F̄_i|²), |·| over x, y, z  eV/Å
forces_std_max  ()        max_i σ_F,i                                            eV/Å
==============  ========  =====================================================  =====

σ_F,i is the norm form: √3 times the per-component standard deviation when x, y and z are equally uncertain, and
directly comparable with the norm of the force error |F̄_i − F_i^ref|.

Members that share a variant and configuration are evaluated in ONE call: their backbones' weights are stacked and the
backbone is ``vmap``-ed over them (``sake_md.stacking``). Members of another configuration form their own stacked group.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from torch import nn

from .batch import atoms_to_batch, check_structure
from .calculator import check_keywords
from .checkpoint import UNITS, load_checkpoint
from .data import Dataset
from .devices import resolve_device, resolve_dtype
from .errors import CommitteeError
from .inference import inference_potential
from .model import SAKEPotential, compute_forces
from .predict import predict_batches
from .stacking import StackedPotentials as StackedMembers  # public here under this name

__all__ = ["Member", "check_members", "StackedMembers", "Committee", "committee_statistics",
           "CommitteeCalculator", "per_structure", "predict_dataset"]


@dataclass
class Member:
    """One potential of a committee with where it came from (``label``: its file) and its stored units."""

    potential: SAKEPotential
    label: str
    units: dict

    @classmethod
    def load(cls, model: str | Path | SAKEPotential, index: int) -> "Member":
        if isinstance(model, SAKEPotential):
            return cls(model, f"member {index}", dict(UNITS))
        potential, data = load_checkpoint(model, with_metadata=True)
        return cls(potential, str(model), data.get("units", dict(UNITS)))


def check_members(members: Sequence[Member], dtype_given: bool = False):
    """Refuse a committee whose members know different elements, use other units or (unless the caller
    chose one dtype for all) were stored in different dtypes. Each message names the files."""
    if len(members) < 2:
        raise CommitteeError(f"a committee needs at least two potentials, got {len(members)}")
    first = members[0]
    checks = [("species", lambda m: " ".join(chemical_symbols[z] for z in m.potential.atomic_numbers), ""),
              ("units", lambda m: ", ".join(f"{k} {v}" for k, v in sorted(m.units.items())), "")]
    if not dtype_given:
        checks.append(("dtypes", lambda m: str(m.potential.dtype).removeprefix("torch."),
                       "; pass one dtype (dtype=..., --dtype) to evaluate all members in it"))
    for what, describe, hint in checks:
        if odd := [m for m in members if describe(m) != describe(first)]:
            listing = "; ".join(f"{m.label}: {describe(m)}" for m in [first, *odd])
            raise CommitteeError(f"committee members have different {what}: {listing}{hint}")


class Committee(nn.Module):
    """Potentials that know the same elements, grouped by configuration; one stacked call per group.

    ``predict`` takes ``SAKEPotential.predict``'s arguments, so ``sake_md.predict.predict_batches`` runs a committee
    over a dataset as it runs one potential. Build it from members already on their device and in their dtype
    (``inference_potential``): the stacked weights are copies, which ``.to`` does not move."""

    def __init__(self, potentials: Sequence[SAKEPotential]):
        super().__init__()
        if any(p.cutoff is not None for p in potentials):  # the stacked backbone call builds no neighbour list
            raise CommitteeError("a committee of sparse-mode (cutoff) models is not supported: its stacked call "
                                 "is dense and would give other energies; evaluate the members one by one")
        self.potentials = nn.ModuleList(potentials)
        groups: dict[str, list[int]] = {}  # one group per configuration
        for m, potential in enumerate(self.potentials):
            groups.setdefault(json.dumps(potential.config.to_dict(), sort_keys=True), []).append(m)
        self.groups = [(idx, StackedMembers([self.potentials[m] for m in idx])) for idx in groups.values()]
        self.order = torch.tensor([m for idx, _ in self.groups for m in idx]).argsort()

    @property
    def species_index(self) -> torch.Tensor:
        return self.potentials[0].species_index

    def members(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> dict:
        """Every member's energies (M, B) and per-atom energies (M, B, N) in float64, forces (M, B, N, 3)
        in the model dtype, in the members' order. Shape: species (B, N), positions (B, N, 3), mask (B, N)."""
        energies, forces = [], []
        for idx, stacked in self.groups:
            x = positions.detach().expand(len(stacked), *positions.shape).clone().requires_grad_(True)
            with torch.enable_grad():
                atomic = stacked.atomic(species, x, mask, in_dims=(None, 0, None))  # (M, B, N): shared structures
                forces.append(compute_forces(atomic.sum(-1), x))
            refs = torch.stack([self.potentials[m].reference_energy(species, mask) for m in idx])
            energies.append(atomic.detach().to(torch.float64) + refs)
        energies = torch.cat(energies)[self.order]
        return {"energy": energies.sum(-1), "energies": energies, "forces": torch.cat(forces)[self.order]}

    def predict(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, forces: bool = True,
                cell=None, pbc=None) -> dict:
        """The statistics of ``committee_statistics``, the mean per-atom energies ``energies`` (B, N) and each member's
        ``committee_energy`` (M, B) and ``committee_forces`` (M, B, N, 3), for a padded batch.

        Forces are always computed (their spread is the point). The members run in dense mode, so a periodic batch
        (``pbc``) is refused. Shape: species (B, N), positions (B, N, 3), mask (B, N)."""
        if pbc is not None and bool(pbc.any()):
            raise CommitteeError("a committee evaluates molecules (dense mode); periodic structures are not supported")
        members = self.members(species, positions, mask)
        return {**committee_statistics(members["energy"], members["forces"]), "energies": members["energies"].mean(0),
                "committee_energy": members["energy"], "committee_forces": members["forces"]}


def committee_statistics(energy: torch.Tensor, forces: torch.Tensor) -> dict:
    """Mean and spread over the members (axis 0), as defined in the module docstring.

    Shape: energy (M, B), forces (M, B, N, 3) -> energy, energy_std (B,), forces (B, N, 3),
    forces_std (B, N), forces_std_max (B,). Padding atoms (zero forces) have zero spread."""
    forces = forces.to(torch.float64)
    mean_f = forces.mean(0)
    forces_std = (forces - mean_f).square().sum(-1).mean(0).sqrt()
    return {"energy": energy.mean(0), "energy_std": energy.std(0, correction=0), "forces": mean_f,
            "forces_std": forces_std, "forces_std_max": forces_std.amax(-1)}


class CommitteeCalculator(Calculator):
    """ASE calculator for a committee of SAKE potentials: mean energy and forces, and their spread.

    ``models`` are checkpoint paths or ``SAKEPotential``s (at least two) that know the same elements in the same units.
    ``dtype`` defaults to the members' (which must then agree). Besides the mean (``energy``, ``forces``, ``energies``),
    ``results`` holds ``energy_std``, ``forces_std``, ``forces_std_max`` (module docstring) and each member's
    ``committee_energy`` (M,) and ``committee_forces`` (M, N, 3)."""

    implemented_properties = ["energy", "free_energy", "forces", "energies", "energy_std", "forces_std",
                              "forces_std_max", "committee_energy", "committee_forces"]

    def __init__(self, models: Sequence[str | Path | SAKEPotential], device: str = "cpu", dtype=None, **kwargs):
        check_keywords(type(self), kwargs)
        super().__init__(**kwargs)
        if isinstance(models, (str, Path, SAKEPotential)):
            raise CommitteeError("CommitteeCalculator takes a list of potentials; for one, use SAKECalculator")
        members = [Member.load(model, k) for k, model in enumerate(models)]
        check_members(members, dtype_given=dtype is not None)
        self.labels, self.device = [m.label for m in members], resolve_device(device)
        self.dtype = resolve_dtype(dtype) if dtype is not None else members[0].potential.dtype
        self.potentials = [inference_potential(m.potential, self.device, self.dtype) for m in members]
        self.potential = self.potentials[0]  # the elements, for validating structures
        self.committee = Committee(self.potentials)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.predict([self.atoms])[0]
        self.results = {**out, "free_energy": out["energy"]}

    def predict(self, atoms_list, batch_size: int = 32) -> list[dict]:
        """Evaluate many structures (any sizes) in padded batches, all members in one call per batch -> one dict per
        structure with the keys of ``results`` (floats and float64 arrays)."""
        results = []
        for start in range(0, len(atoms_list), batch_size):
            chunk = atoms_list[start:start + batch_size]
            b = atoms_to_batch(chunk, self.potential, self.dtype, self.device)
            out = self.committee.predict(b.species, b.positions, b.mask, cell=b.cell, pbc=b.pbc)
            results += per_structure(out, [len(atoms) for atoms in chunk])
        return results


def per_structure(out: dict, n_atoms: Sequence[int]) -> list[dict]:
    """The padded outputs of ``Committee.predict`` as one dict per structure of n_atoms[b] atoms, with the
    keys of ``CommitteeCalculator.results`` (floats and float64 arrays)."""
    out = {k: v.detach().to(torch.float64).cpu().numpy() for k, v in out.items()}
    return [{**{k: float(out[k][b]) for k in ("energy", "energy_std", "forces_std_max")},
             **{k: out[k][b, :n].copy() for k in ("energies", "forces", "forces_std")},
             "committee_energy": out["committee_energy"][:, b].copy(),
             "committee_forces": out["committee_forces"][:, b, :n].copy()} for b, n in enumerate(n_atoms)]


def predict_dataset(committee: Committee, data: Dataset, batch_size: int = 64) -> list[dict]:
    """One dict per frame of ``data`` (as ``CommitteeCalculator.predict``): padded batches of the dataset
    straight into the members through ``predict_batches``, as ``sake_md.predict.predict`` for one potential.
    Frames with elements the members do not know raise ``InputError`` before anything runs."""
    first = committee.potentials[0]  # members know the same elements and are dense (Committee)
    for m, (z, x) in enumerate(zip(data.numbers, data.positions, strict=True)):
        check_structure(z, x, first.atomic_numbers, None if data.pbc is None else data.pbc[m],
                        f"frame {m} of {data.source}")
    results = []
    for lb, out in predict_batches(committee, data, batch_size):
        results += per_structure(out, data.n_atoms[lb.indices])
    return results
