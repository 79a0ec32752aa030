"""``SAKECalculator``: an ASE calculator for any sake_md potential (energy, forces, per-atom energies, and
stress for periodic structures in sparse mode)."""

import inspect
from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .allocator import keep_freed_memory
from .batch import atoms_to_batch
from .compile import CompiledPotential, check_mode, make_predictor
from .devices import resolve_dtype
from .errors import InputError
from .export import PackagedPotential, is_package
from .inference import inference_potential
from .model import SAKEPotential
from .neighbours import VerletNeighbours

__all__ = ["check_keywords", "SAKECalculator"]


def check_keywords(calculator: type, kwargs: dict):
    """Refuse keywords that neither ``calculator.__init__`` nor ASE's ``Calculator.__init__`` names: ASE
    would store a typo such as ``dtpye=`` as a parameter and carry on. The valid names come from the
    signatures, so a new keyword of ``calculator`` is valid without a second edit."""
    valid = [name for cls in (calculator, Calculator) for name, p in inspect.signature(cls.__init__).parameters.items()
             if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [name for name in kwargs if name not in valid]
    if unknown:
        raise TypeError(f"{calculator.__name__} got unknown keyword(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


class SAKECalculator(Calculator):
    """ASE calculator for a SAKE potential.

    ``model`` is a checkpoint path, a ``SAKEPotential`` or a precompiled ``.pt2`` package (``sake-md compile``; its
    device and dtype are fixed). ``dtype`` defaults to the checkpoint's. Energies are in eV, forces in eV/Å.
    ``energies`` are per-atom energies that sum to ``energy``.

    ``compile``: True compiles energy+forces (minutes the first time for a shape, seconds later), False evaluates
    eagerly, "auto" decides at the first call for ``expected_calls`` calls (``sake_md.compile.make_predictor``).
    Compilation applies to dense (molecular) models.

    A model in sparse mode (trained with a cutoff, or a dense one given ``cutoff`` in Å) takes periodic structures and
    gives ``stress`` (eV/Å³) when all three directions are periodic; its neighbour list is reused between calls with
    a ``skin`` in Å (see ``sake_md.neighbours.VerletNeighbours``)."""

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

    def __init__(self, model: str | Path | SAKEPotential, device: str = "cpu", dtype=None, compile=False,
                 expected_calls: int | None = None, verbose: bool = True, cutoff: float | None = None,
                 skin: float = 0.5, **kwargs):
        check_keywords(type(self), kwargs)
        super().__init__(**kwargs)
        self.compile_mode, self.expected_calls, self.verbose = check_mode(compile), expected_calls, verbose
        self.neighbours, package = None, is_package(model)
        self.potential = PackagedPotential(model) if package else inference_potential(model, device, dtype, cutoff)
        self.device, self.dtype = self.potential.device, self.potential.dtype
        if package:  # its device and dtype are fixed: refuse others
            asked = {"device": None if device in ("auto", None) else torch.device(device).type,
                     "dtype": None if dtype is None else str(resolve_dtype(dtype)).removeprefix("torch.")}
            for name, value in asked.items():
                have = str(getattr(self, name)).removeprefix("torch.").split(":")[0]
                if value is not None and value != have:
                    raise InputError(f"{model} was compiled for {name} {have}; asked for {value}")
            self.evaluator = self.potential
            return
        dense = self.potential.cutoff is None
        if not dense:
            self.neighbours = VerletNeighbours(self.potential.cutoff, skin)
            self.implemented_properties = [*self.implemented_properties, "stress"]
            keep_freed_memory()  # large systems: linear cost instead of page faults on every call
        self.evaluator = CompiledPotential(self.potential, verbose) if compile is True and dense else None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.predict([self.atoms], forces=True, neighbours=self.neighbours)[0]
        self.results = {"energy": out["energy"], "free_energy": out["energy"], "forces": out["forces"],
                        "energies": out["energies"]}
        if "stress" in out:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"])

    def predict(self, atoms_list, batch_size: int = 32, forces: bool = True,
                neighbours: VerletNeighbours | None = None) -> list[dict]:
        """Evaluate many structures (any sizes) in padded batches; one dict per structure: energy (float, eV),
        energies (N,), forces (N, 3) as float64 arrays, and stress (3, 3) eV/Å³ for batches of structures periodic in
        all directions (sparse mode, forces on). ``neighbours`` (one structure) reuses that neighbour list; by
        default each call builds its own."""
        results = []
        for start in range(0, len(atoms_list), batch_size):
            chunk = atoms_list[start:start + batch_size]
            batch = atoms_to_batch(chunk, self.potential, self.dtype, self.device)
            stress = forces and batch.pbc is not None and bool(batch.pbc.all())
            if self.potential.cutoff is None and not forces and not isinstance(self.potential, PackagedPotential):
                out = self.potential.predict(batch.species, batch.positions, batch.mask, forces=False)
            elif self.potential.cutoff is None:
                if self.evaluator is None:  # compile=False or "auto": decided on the first batch
                    self.evaluator = make_predictor(self.potential, self.compile_mode, batch.species, batch.positions,
                                                    batch.mask, self.expected_calls, self.verbose)
                out = self.evaluator(batch.species, batch.positions, batch.mask)
            else:  # sparse mode: neighbour tables change from call to call, so it runs eagerly
                table = None
                if neighbours is not None and len(chunk) == 1:
                    a = chunk[0]
                    table = neighbours.table(a.numbers, a.positions, a.cell.array, a.pbc, self.device)
                with torch.enable_grad():
                    out = self.potential.predict(batch.species, batch.positions, batch.mask, forces=forces,
                                                 cell=batch.cell, pbc=batch.pbc, stress=stress, neighbours=table)
            energy, energies = out["energy"].cpu().numpy(), out["energies"].cpu().numpy()
            f = out["forces"].detach().to(torch.float64).cpu().numpy() if forces else None
            for b, atoms in enumerate(chunk):
                n = len(atoms)
                res = {"energy": float(energy[b]), "energies": energies[b, :n].copy()}
                if forces:
                    res["forces"] = f[b, :n].copy()
                if stress:
                    res["stress"] = out["stress"][b].detach().to(torch.float64).cpu().numpy()
                results.append(res)
        return results
