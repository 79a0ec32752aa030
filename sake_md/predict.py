"""Predictions of a potential over a ``Dataset`` in padded batches, and the one MAE/RMSE aggregator.

Training (validation, the energy-offset refit), evaluation and ``compare``'s force errors all predict
with ``predict_batches``/``predict`` and aggregate with ``frame_terms``/``ErrorSums``/``STATISTICS``,
so that every reported error is defined once: energy per frame, forces per component.
"""

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .batch import check_structure
from .data import Dataset, LabelledBatch, batches
from .model import SAKEPotential

__all__ = ["predict_batches", "predict", "STATISTICS", "TERMS", "frame_terms", "batch_terms", "statistic", "ErrorSums"]


def predict_batches(potential: SAKEPotential, data: Dataset, batch_size: int = 64, forces: bool = True,
                    order: Sequence[int] | None = None) -> Iterator[tuple[LabelledBatch, dict]]:
    """``(batch, potential.predict(batch))`` for padded batches of ``data`` in ``order`` (default: file order), in
    the potential's dtype and on its device. The outputs are those of ``SAKEPotential.predict``: energy
    (B,) and energies (B, N) float64 eV, energy_model (B,), forces (B, N, 3) eV/Å."""
    p = next(potential.parameters())
    for lb in batches(data, batch_size, potential.species_index, p.dtype, p.device, order):
        b = lb.batch
        with torch.set_grad_enabled(forces):
            out = potential.predict(b.species, b.positions, b.mask, forces=forces, cell=b.cell, pbc=b.pbc)
        yield lb, out


def predict(potential: SAKEPotential, data: Dataset, batch_size: int = 64,
            forces: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Energies (M,) float64 eV and forces [(N_m, 3)] float64 eV/Å (None with ``forces=False``) of every
    frame of ``data``, on the potential's device and in its dtype. Frames with elements the potential
    does not know raise ``InputError`` before anything runs."""
    for m, (z, x) in enumerate(zip(data.numbers, data.positions, strict=True)):
        check_structure(z, x, potential.atomic_numbers, None if data.pbc is None else data.pbc[m],
                        f"frame {m} of {data.source}", periodic_ok=potential.cutoff is not None)
    energy, force_list = [], [] if forces else None
    for lb, out in predict_batches(potential, data, batch_size, forces):
        energy.append(out["energy"].detach().cpu().numpy())
        if forces:
            f = out["forces"].detach().to(torch.float64).cpu().numpy()
            force_list += [f[b, :len(data.numbers[i])].copy() for b, i in enumerate(lb.indices)]
    return np.concatenate(energy), force_list


# ---- errors ----------------------------------------------------------------------------------------
STATISTICS = {  # name: (numerator, denominator, root), over the per-frame terms of ``frame_terms``
    "energy_mae_meV": ("abs_e", "one", False), "energy_rmse_meV": ("sq_e", "one", True),
    "energy_mae_meV_per_atom": ("abs_e_atom", "one", False), "energy_rmse_meV_per_atom": ("sq_e_atom", "one", True),
    "force_mae_meV_A": ("abs_f", "n_f", False), "force_rmse_meV_A": ("sq_f", "n_f", True)}
TERMS = ("abs_e", "sq_e", "abs_e_atom", "sq_e_atom", "abs_f", "sq_f", "n_f", "one")


def _terms(de, abs_f, sq_f, n) -> dict:
    """The per-frame terms of energy errors ``de`` (eV), force sums Σ|ΔF| and Σ|ΔF|² (eV/Å) and atom counts ``n``:
    the one definition of every reported error, for NumPy arrays and torch tensors alike (float64, one shape)."""
    return {"abs_e": abs(de), "sq_e": de ** 2, "abs_e_atom": abs(de) / n, "sq_e_atom": (de / n) ** 2,
            "abs_f": abs_f, "sq_f": sq_f, "n_f": 3.0 * n, "one": n ** 0}


def frame_terms(de, df, n_atoms) -> dict[str, np.ndarray]:
    """Per-frame sums from which every statistic (and its bootstrap) is a ratio of totals. Shapes (M,).
    ``de`` (M,) energy errors in eV; ``df`` force errors in eV/Å, a list [(N_m, 3)] or an array (M, N, 3) that is
    zero at padding; ``n_atoms`` (M,)."""
    return _terms(np.asarray(de, dtype=np.float64), np.array([np.abs(d).sum() for d in df], dtype=np.float64),
                  np.array([np.square(d).sum() for d in df], dtype=np.float64),
                  np.asarray(n_atoms, dtype=np.float64))


def batch_terms(de: torch.Tensor, df: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """``frame_terms`` of padded batches summed over their frames, on the device (no host sync). Shapes: de
    (..., B), df (..., B, N, 3) zero at padding, mask (..., B, N), weight (B,) -> (..., len(TERMS)) float64;
    a frame of weight 0 is not counted (a padded batch's repeats)."""
    de, df = de.detach().to(torch.float64), df.detach().to(torch.float64)
    terms = _terms(de, df.abs().sum((-1, -2)), (df * df).sum((-1, -2)), mask.sum(-1).to(torch.float64))
    stacked = torch.stack([terms[k] for k in TERMS], dim=-1)  # (..., B, T)
    if weight is not None:
        stacked = stacked * weight.unsqueeze(-1)
    return stacked.sum(-2)


def statistic(totals: dict, name: str) -> float:
    """One statistic of STATISTICS from totals of the terms, in meV (or meV/Å)."""
    num, den, root = STATISTICS[name]
    value = totals[num] / max(totals[den], 1.0)
    return 1e3 * (math.sqrt(value) if root else value)


class ErrorSums:
    """Running totals of ``frame_terms`` (float64), e.g. over the batches of an epoch."""

    def __init__(self, sums: torch.Tensor | None = None):
        """``sums``: totals already summed (``batch_terms``), shape (len(TERMS),)."""
        self.sums = torch.zeros(len(TERMS), dtype=torch.float64) if sums is None else sums.to(torch.float64)

    def add(self, de, df, n_atoms) -> None:
        terms = frame_terms(de, df, n_atoms)
        self.sums += torch.tensor([terms[k].sum() for k in TERMS], dtype=torch.float64)

    def add_batch(self, de: torch.Tensor, df: torch.Tensor, mask: torch.Tensor) -> None:
        """Errors of one padded batch: de (B,), df (B, N, 3) zero at padding, mask (B, N)."""
        self.sums += batch_terms(de, df, mask).cpu()

    def summary(self, names: Sequence[str] = tuple(STATISTICS), prefix: str = "", reduce=None) -> dict:
        """``{prefix + name: value}``; ``reduce`` (e.g. a sum over processes) maps the totals first."""
        sums = self.sums if reduce is None else reduce(self.sums)
        totals = dict(zip(TERMS, sums.tolist(), strict=True))
        return {prefix + name: statistic(totals, name) for name in names}
