"""K modules of one architecture evaluated as one: their weights stacked along a leading axis K, and one
``vmap``-ed ``functional_call`` of a weightless template (``torch.func``), instead of K calls.

A committee's members (``sake_md.committee``) share the structures and stack only the weights; the
stacked trainer's runs (``sake_md.stacked``) each bring their own frames, a leading K on every input.
"""

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedModules"]


class StackedModules:
    """Modules of one architecture (same parameter names and shapes) as one vmapped call.

    ``params``/``buffers``: name -> (K, *shape), detached copies (``requires_grad`` to train them);
    ``template``: a copy of the first module on the meta device, which holds the code but no data.
    """

    def __init__(self, modules: Sequence[nn.Module], requires_grad: bool = False):
        params, buffers = stack_module_state(list(modules))
        self.params = {k: v.detach().requires_grad_(requires_grad) for k, v in params.items()}
        self.buffers = buffers
        self.template = copy.deepcopy(modules[0]).to("meta")

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def __call__(self, *args, in_dims: int | None | Sequence[int | None] = 0,
                 params: dict[str, torch.Tensor] | None = None):
        """``template(*args)`` once per module k with its own weights, in one call; outputs gain a leading K.

        ``in_dims``: per argument (or one for all), 0 where it has a leading K (module k gets slice k), None
        where all modules share it. ``params`` replaces the stacked weights (e.g. a compiled step's inputs).
        """
        dims = (in_dims,) * len(args) if in_dims is None or isinstance(in_dims, int) else tuple(in_dims)

        def one(p, b, *a):
            return functional_call(self.template, (p, b), a)

        return vmap(one, in_dims=(0, 0, *dims))(self.params if params is None else params, self.buffers, *args)
