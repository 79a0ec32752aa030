"""``SAKECalculator``: an ASE calculator for any sake_md potential (energy, forces, per-atom energies)."""

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .batch import atoms_to_batch
from .checkpoint import load_checkpoint
from .compile import CompiledPotential, check_mode, make_predictor
from .export import PackagedPotential, is_package
from .model import SAKEPotential

DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
          torch.float64: torch.float64}


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """"auto" picks CUDA when available; asking for CUDA without it is an error, not a silent fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but PyTorch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None


class SAKECalculator(Calculator):
    """ASE calculator for a SAKE potential.

    ``model`` is a checkpoint path, a ``SAKEPotential`` or a precompiled ``.pt2`` package (``sake-md
    compile``; its device and dtype are fixed). ``dtype`` defaults to the checkpoint's. Energies are in
    eV, forces in eV/Å. ``energies`` are per-atom energies that sum to ``energy``.

    ``compile``: True compiles energy+forces (``sake_md.compile``; minutes the first time for a shape,
    seconds later), False evaluates eagerly, "auto" compiles when ``expected_calls`` calls would take
    eager longer than 3× the expected compile time (decided at the first call; never without
    ``expected_calls``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

    def __init__(self, model: str | Path | SAKEPotential, device: str = "cpu", dtype=None, compile=False,
                 expected_calls: int | None = None, verbose: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.compile_mode, self.expected_calls, self.verbose = check_mode(compile), expected_calls, verbose
        if is_package(model):
            self._load_package(model, device, dtype)
            return
        potential = model if isinstance(model, SAKEPotential) else load_checkpoint(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype) if dtype is not None else potential.dtype
        self.potential = potential.to(device=self.device, dtype=self.dtype).eval()
        for p in self.potential.parameters():
            p.requires_grad_(False)
        self.evaluator = CompiledPotential(self.potential, verbose) if compile is True else None

    def _load_package(self, path, device, dtype):
        self.potential = self.evaluator = PackagedPotential(path)
        self.device, self.dtype = self.potential.device, self.potential.dtype
        asked = {"device": None if device in ("auto", None) else torch.device(device).type,
                 "dtype": None if dtype is None else str(resolve_dtype(dtype)).removeprefix("torch.")}
        for name, value in asked.items():
            have = str(getattr(self, name)).removeprefix("torch.").split(":")[0]
            if value is not None and value != have:
                raise ValueError(f"{path} was compiled for {name} {have}; asked for {value}")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.predict([self.atoms], forces=True)[0]
        self.results = {"energy": out["energy"], "free_energy": out["energy"], "forces": out["forces"],
                        "energies": out["energies"]}

    def predict(self, atoms_list, batch_size: int = 32, forces: bool = True) -> list[dict]:
        """Evaluate many structures (any sizes) in padded batches.

        Returns one dict per structure: energy (float, eV), energies (N,), forces (N, 3) as float64 arrays.
        """
        results = []
        for start in range(0, len(atoms_list), batch_size):
            chunk = atoms_list[start:start + batch_size]
            batch = atoms_to_batch(chunk, self.potential, self.dtype, self.device)
            out = self._evaluate(batch, forces)
            energy = out["energy"].cpu().numpy()
            energies = out["energies"].cpu().numpy()
            f = out["forces"].detach().to(torch.float64).cpu().numpy() if forces else None
            for b, atoms in enumerate(chunk):
                n = len(atoms)
                res = {"energy": float(energy[b]), "energies": energies[b, :n].copy()}
                if forces:
                    res["forces"] = f[b, :n].copy()
                results.append(res)
        return results

    def _evaluate(self, batch, forces: bool) -> dict:
        if not forces and not isinstance(self.potential, PackagedPotential):
            return self.potential.predict(batch.species, batch.positions, batch.mask, forces=False)
        if self.evaluator is None:  # compile=False or "auto": decided on the first batch
            self.evaluator = make_predictor(self.potential, self.compile_mode, batch.species, batch.positions,
                                            batch.mask, self.expected_calls, self.verbose)
        return self.evaluator(batch.species, batch.positions, batch.mask)

    def predict_arrays(self, atoms_list, batch_size: int = 32) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (M,) and a list of force arrays, for evaluation code."""
        out = self.predict(atoms_list, batch_size)
        return np.array([o["energy"] for o in out]), [o["forces"] for o in out]
