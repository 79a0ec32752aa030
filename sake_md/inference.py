"""The one way to get a potential ready for inference: load (or copy), set mode, device and dtype, freeze. Every
consumer (the ASE calculators, evaluation, export, the MD engines, the engine adapters in ``sake_md.engines``) calls
``inference_potential``."""

import copy
from pathlib import Path

from .checkpoint import load_checkpoint
from .devices import resolve_device, resolve_dtype
from .model import SAKEPotential

__all__ = ["inference_potential"]


def inference_potential(model: str | Path | SAKEPotential, device="cpu", dtype=None,
                        cutoff: float | None = None) -> SAKEPotential:
    """A frozen potential in eval mode on ``device`` in ``dtype`` (default: the checkpoint's) from ``model``, a
    checkpoint path (loaded with ``weights_only=True``) or a ``SAKEPotential`` (copied: the caller's, e.g. one being
    trained, keeps its state); ``cutoff`` (Å) puts a dense model in sparse mode (``SAKEPotential.with_cutoff``)."""
    potential = copy.deepcopy(model) if isinstance(model, SAKEPotential) else load_checkpoint(model)
    potential = potential.with_cutoff(cutoff)
    dtype = resolve_dtype(dtype) if dtype is not None else potential.dtype
    return potential.to(device=resolve_device(device), dtype=dtype).eval().requires_grad_(False)
