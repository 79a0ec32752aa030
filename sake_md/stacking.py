"""K modules of one architecture evaluated as one: their weights stacked along a leading axis K, and one
``vmap``-ed ``functional_call`` of a weightless template (``torch.func``), instead of K calls: a committee's members
(``sake_md.committee``), the runs trained together (``sake_md.stacked``); ``StackedPotentials.atomic`` tells how."""

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedModules", "StackedPotentials"]


class StackedModules:
    """Modules of one architecture (same parameter names and shapes) as one vmapped call. ``params``/``buffers``:
    name -> (K, *shape), detached copies (``requires_grad`` to train them); ``template``: a copy of the first module on
    the meta device, which holds the code but no data."""

    def __init__(self, modules: Sequence[nn.Module], requires_grad: bool = False):
        params, self.buffers = stack_module_state(list(modules))
        self.params = {k: v.detach().requires_grad_(requires_grad) for k, v in params.items()}
        self.template = copy.deepcopy(modules[0]).to("meta")

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def __call__(self, *args, in_dims: int | None | Sequence[int | None] = 0,
                 params: dict[str, torch.Tensor] | None = None):
        """``template(*args)`` once per module k with its own weights, in one call; outputs gain a leading K.
        ``in_dims``: per argument (or one for all), 0 where it has a leading K (module k gets slice k), None where all
        modules share it. ``params`` replaces the stacked weights (e.g. a compiled step's inputs)."""
        dims = (in_dims,) * len(args) if in_dims is None or isinstance(in_dims, int) else tuple(in_dims)
        call = vmap(lambda p, b, *a: functional_call(self.template, (p, b), a), in_dims=(0, 0, *dims))
        return call(self.params if params is None else params, self.buffers, *args)


class StackedPotentials(StackedModules):
    """The backbones of potentials of one variant and configuration, stacked, and their energy scales ``scale``
    (K,) in the backbones' dtype and on their device."""

    def __init__(self, potentials: Sequence[nn.Module]):
        super().__init__([p.backbone for p in potentials])
        first = next(iter(self.params.values()))
        self.scale = torch.tensor([p.energy_scale for p in potentials], dtype=first.dtype, device=first.device)

    def atomic(self, *args, scale: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Scaled per-atom model energies: ``self(*args, **options)`` times the energy scales (or ``scale``, e.g. an
        input of a compiled step), as ``SAKEPotential`` scales them (per atom, before the sum).
        Shape: species (B, N), positions (M, B, N, 3), mask (B, N) with ``in_dims=(None, 0, None)`` (a committee:
        each member at its own copy of the positions), or each with a leading K (runs trained together) -> (K, B, N)."""
        return (self.scale if scale is None else scale).view(-1, 1, 1) * self(*args, **options)
