"""The compiled training step: forward, forces, loss and parameter gradients as ONE compiled graph.

One function of (parameters, buffers, species, positions, mask, energy and force labels, loss weights) runs the model
through ``torch.func.functional_call``, takes forces with ``create_graph=True``, forms the residuals and the loss with
the trainer's own ``residuals`` and ``loss_from`` (the one definition of the loss) and differentiates the loss by the
parameters. It is traced with ``make_fx`` (fake tensors, so nothing is computed and data-dependent Python branches fail
loudly instead of being baked in) into a single aten graph, which ``torch.compile(fullgraph=True, dynamic=False)``
compiles with the inductor options and the persistent cache of compiled inference (``sake_md.compile``). The optimiser
step stays eager; gradients are written into ``p.grad`` (under DDP they are all-reduced and averaged here, as DDP
would).

Shapes are fixed, so every graph serves one (frames, atoms) shape:

* **Frames.** Full batches have a fixed size. The last, partial batch of an epoch is **padded** to that size by
  repeating its own frames (as ``DistributedSampler`` pads): no frame is dropped, no extra compile, and no empty frame
  (whose 1/N would be inf) enters the graph. Those repeats weigh double in that one step's loss; the running train
  errors count each real frame once.
* **Atoms.** Data of one molecule is never padded. With mixed sizes a batch's atom count is rounded up to a multiple of
  ``ATOM_BUCKET`` (capped at the largest molecule of the data), so at most ceil(N_max / 8) graphs are compiled; padding
  atoms are masked as everywhere in sake_md.

Float fields of the config that the loss reads (energy and force weights, ...) are inputs of the graph, so a weight
changed between epochs does not recompile; any other field it reads (a loss kind, a flag) is a constant of the graph and
a change makes a new one. If compiling fails, training goes on eagerly after one warning.
"""

import dataclasses
import time

import numpy as np
import torch
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from . import distributed, objective
from .batch import Batch
from .compile import compile_record_key, compiled_or_none, expected_compile_s, record_compile_s
from .console import notify
from .data import LabelledBatch

# The first compile of the MD17 model's training step on one CPU core took 91-314 s (docs/recipe.md); a guess on CUDA
TRAIN_COLD_COMPILE_S = {"cpu": 240.0, "cuda": 120.0}
ATOM_BUCKET = 8


def bucket_atoms(n: int, n_max: int, step: int = ATOM_BUCKET) -> int:
    """Padded atom count for a batch whose largest molecule has ``n`` atoms: ``n`` rounded up to a multiple of
    ``step``, never above ``n_max`` (the data's largest molecule), so data of one molecule keeps its exact size."""
    return max(n, min(-(-n // step) * step, n_max))


def pad_batch(lb: LabelledBatch, frames: int, atoms: int) -> LabelledBatch:
    """Pad ``lb`` (b, n) to (frames, atoms): extra frames repeat the batch's own frames cyclically,
    extra atoms are padding (mask False, species 0, zero positions and forces)."""
    b, n = lb.batch.species.shape[-2:]
    if (b, n) == (frames, atoms):
        return lb
    rows = torch.arange(frames, device=lb.energy.device) % b

    def grow(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((b, atoms, *t.shape[2:]))
        out[:, :n] = t
        return out[rows]

    batch = Batch(grow(lb.batch.species), grow(lb.batch.positions), grow(lb.batch.mask))
    return LabelledBatch(batch, lb.energy[rows], grow(lb.forces), np.asarray(lb.indices)[rows.cpu().numpy()])


class TracedSettings:
    """``cfg`` as ``loss_from`` sees it while traced: named weights are graph tensors, every other
    field read is recorded in ``constants`` (it becomes part of the graph)."""

    def __init__(self, cfg, weights: dict):
        self._cfg, self._weights, self.constants = cfg, weights, {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._weights:
            return self._weights[name]
        return self.constants.setdefault(name, getattr(self._cfg, name))


def _compile(graph: torch.fx.GraphModule, backend: str, device: torch.device):
    """torch.compile with sake_md's inductor settings and persistent cache (``sake_md.compile``);
    a separate function so that tests can make it fail."""
    if backend != "inductor":
        return torch.compile(graph, backend=backend, fullgraph=True, dynamic=False)
    from .compile import compiler_unavailable, default_options, use_persistent_cache

    if reason := compiler_unavailable(device):
        raise RuntimeError(reason)
    use_persistent_cache()
    return torch.compile(graph, fullgraph=True, dynamic=False, options=default_options(device))


class BatchLoss(objective.EnergyAndForces):
    """The trainer's loss of one labelled batch, as a module around the potential: ``functional_call``
    on it swaps parameters and buffers in everywhere (model and reference energies alike)."""

    def forward(self, species, positions, mask, energy, forces, settings):
        """Shape: (B, N), (B, N, 3), (B, N), (B,), (B, N, 3) -> loss (), de (B,), df (B, N, 3), with graph."""
        energy_model, predicted = super().forward(species, positions, mask)
        labelled = LabelledBatch(Batch(species, positions, mask), energy, forces, None)
        de, df = objective.residuals(energy_model, predicted, labelled, self.potential)
        return objective.loss_from(de, df, mask, settings), de, df


class CompiledGraph:
    """One compiled step for one shape: flat tensors in, (loss, de, df, *grads of used params) out."""

    def __init__(self, fn, used: list[bool], weights: tuple[str, ...], constants: dict):
        self.fn, self.used, self.weights, self.constants, self.calls = fn, used, weights, constants, 0

    def matches(self, cfg, weights: tuple[str, ...]) -> bool:
        same_weights = self.weights in ((), weights)  # () : the loss's floats are constants of this graph
        return same_weights and all(_same(getattr(cfg, k, object()), v) for k, v in self.constants.items())


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays: compare as text
        return repr(a) == repr(b)


class CompiledTrainStep:
    """``step(lb, cfg) -> (loss, de, df)`` like ``Trainer.eager_step``, through compiled graphs (module docstring).

    ``frames``: the (local) batch size of full batches; smaller batches are padded to it. ``n_max``: the largest
    molecule of the data (caps the atom buckets). ``backend``: torch.compile's ("eager" or "aot_eager" to debug the
    traced graph without inductor). Graphs are kept per shape in ``self.graphs``. ``self.module``: (species, positions,
    mask, energy, forces, settings) -> (loss, de, df), its parameters the trained ones (``BatchLoss``;
    ``sake_md.stacked``: K runs, a loss each). Under DDP (``ctx.active``) every step, compiled or not, averages the
    gradients with one all-reduce, so processes never disagree about collectives."""

    what = "the training step"  # in messages, the first when a graph is compiled:
    announcement = ("compiling the training step for batches of {B} frames x {N} atoms ({dtype}); minutes on a CPU "
                    "the first time, torch's cache makes later runs faster")

    def __init__(self, potential, frames: int, n_max: int, ctx: distributed.Context | None = None,
                 verbose: bool = True, backend: str = "inductor"):
        self.potential, self.frames, self.n_max, self.backend = potential, frames, n_max, backend
        self.ctx, self.verbose = ctx or distributed.Context(), verbose
        self.module, self.failed, self.compile = BatchLoss(potential), False, True  # compile False: always eager
        self.graphs: dict[tuple, list[CompiledGraph]] = {}
        self.compile_seconds: list[float] = []
        self._weights: tuple[tuple, torch.Tensor] | None = None  # (key, device tensor) of the loss weights

    @classmethod
    def for_trainer(cls, trainer, backend: str = "inductor", verbose: bool = True) -> "CompiledTrainStep":
        """The compiled step of a ``Trainer``: its potential and this process's share of a full batch."""
        cfg, ctx = trainer.cfg, trainer.ctx
        frames = len(np.array_split(np.arange(min(cfg.batch_size, len(trainer.train_set))), ctx.world)[ctx.rank])
        return cls(trainer.potential, frames, int(trainer.train_set.n_atoms.max()), ctx, ctx.main and verbose, backend)

    def record_key(self) -> tuple:
        """The full batches' shape, as ``sake_md.compile`` keys compile times (device at index 3)."""
        return (self.frames, self.n_max, self.potential.dtype, self.potential.device, "training step", self.backend)

    def expected_compile_s(self) -> tuple[float, str]:
        """(seconds, basis) to compile the full batches' step now: as ``sake_md.compile.expected_compile_s``,
        with the training step's own first-compile time (about twice the inference graph's)."""
        return expected_compile_s(self.potential, self.record_key(), cold=TRAIN_COLD_COMPILE_S)

    @property
    def n_graphs(self) -> int:
        return sum(len(g) for g in self.graphs.values())

    # ---- the step ------------------------------------------------------------------------------
    def __call__(self, lb: LabelledBatch, cfg):
        if self.failed or not self.compile:
            return self.eager(lb, cfg)
        b, n = lb.batch.species.shape[-2:]
        padded = pad_batch(lb, max(b, self.frames), bucket_atoms(n, max(self.n_max, n)))
        values = [(f, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]
        names = tuple(f.name for f, v in values  # the numeric (float-typed) fields: they enter the graph as tensors
                      if isinstance(v, float) or (f.type is float and isinstance(v, int) and not isinstance(v, bool)))
        graph = next((g for g in self.graphs.get(self.shape_key(padded), []) if g.matches(cfg, names)), None)
        if graph is None:
            built, reason = compiled_or_none(lambda: self.build(padded, cfg, names), self.what, "training eagerly")
            if reason is not None:
                self.failed = True
                return self.eager(lb, cfg)
            graph, (loss, de, df, grads) = built
        else:
            loss, de, df, grads = self.run(graph, padded, cfg)
        self.write_grads(graph.used, grads)
        return loss, de[..., :b], df[..., :b, :n, :]

    def eager(self, lb: LabelledBatch, cfg):
        """The same step function, run eagerly on the unpadded batch."""
        (loss, de, df, *grads), used, _ = self.trace(lb, cfg, (), tracer=lambda step: step)
        self.write_grads(used, grads)
        return loss, de, df

    def shape_key(self, lb: LabelledBatch) -> tuple:
        x = lb.batch.positions
        return tuple(x.shape), x.dtype, x.device  # the energy scale and shift are inputs (buffers) of the graph

    def inputs(self, params, lb: LabelledBatch, cfg, names) -> list[torch.Tensor]:
        """The step function's flat inputs: parameters, buffers, the batch, its labels, the loss weights (a device
        tensor made again only when they change: a new host-to-device copy every step would wait for the GPU)."""
        b = lb.batch
        key = tuple(float(getattr(cfg, k)) for k in names), b.positions.dtype, lb.energy.device
        if self._weights is None or self._weights[0] != key:
            self._weights = key, torch.tensor(key[0], dtype=key[1], device=key[2])
        return [*params, *self.module.buffers(), b.species, b.positions, b.mask, lb.energy, lb.forces, self._weights[1]]

    def run(self, graph: CompiledGraph, lb: LabelledBatch, cfg):
        params = [p.detach() for p in self.module.parameters()]
        start = time.perf_counter()
        with torch.no_grad():
            loss, de, df, *grads = graph.fn(*self.inputs(params, lb, cfg, graph.weights))
        if graph.calls == 0:  # torch.compile compiles on the first call
            self.compile_seconds[-1] += time.perf_counter() - start
            if lb.batch.species.shape[1:] == (self.n_max,):  # the full batches' graph of one run: what "auto" weighs
                record_compile_s(compile_record_key(self.potential, self.record_key()), self.compile_seconds[-1])
            notify(f"compiled {self.what} in {self.compile_seconds[-1]:.0f} s", self.verbose)
        graph.calls += 1
        return loss, de, df, grads

    def write_grads(self, used: list[bool], grads) -> None:
        """Set p.grad (None where the loss does not reach a parameter, as eager autograd leaves it);
        under DDP, average over processes with one all-reduce, as DDP does."""
        params = list(self.module.parameters())
        it = iter(grads)
        full = [next(it) if u else None for u in used]
        if self.ctx.active:
            full = [torch.zeros_like(p) if g is None else g for p, g in zip(params, full, strict=True)]
            flat = torch.cat([g.reshape(-1) for g in full])
            torch.distributed.all_reduce(flat)
            flat /= self.ctx.world
            full = [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]
        for p, g in zip(params, full, strict=True):
            p.grad = None if g is None else g.detach()

    # ---- tracing and compiling ------------------------------------------------------------------
    def step_function(self, cfg, names: tuple[str, ...], used: list, settings: list):
        """The step as a function of flat tensors (see ``inputs``) -> (loss, de, df, *grads of the used parameters).
        ``used`` and ``settings`` receive which parameters got a gradient and the config view that the loss read."""
        param_names = [k for k, _ in self.module.named_parameters()]
        buffer_names = [k for k, _ in self.module.named_buffers()]
        n_p, n_b = len(param_names), len(buffer_names)

        def step(*flat):
            ps, bs, (*batch, weights) = flat[:n_p], flat[n_p:n_p + n_b], flat[n_p + n_b:]
            state = {**dict(zip(param_names, ps, strict=True)), **dict(zip(buffer_names, bs, strict=True))}
            view = TracedSettings(cfg, {k: weights[i] for i, k in enumerate(names)})
            settings.append(view)
            loss, de, df = functional_call(self.module, state, (*batch, view))
            # ones: what autograd takes for a scalar loss; for K runs' losses (K,), the gradient of their sum
            grads = torch.autograd.grad(loss, ps, torch.ones_like(loss), allow_unused=True)
            used[:] = [g is not None for g in grads]
            return (loss.detach(), de.detach(), df.detach(), *[g for g in grads if g is not None])

        return step

    def build(self, lb: LabelledBatch, cfg, names) -> tuple[CompiledGraph, tuple]:
        """Trace the step for this shape and these settings, compile it and run it on ``lb`` (torch compiles at the
        first call) -> (graph, its outputs)."""
        *K, B, N = lb.batch.species.shape
        x = lb.batch.positions
        notify(self.announcement.format(K=K[0] if K else None, B=B, N=N, dtype=x.dtype, device=x.device), self.verbose)
        start = time.perf_counter()
        try:
            traced, used, constants = self.trace(lb, cfg, names)
        except Exception:  # the loss branches on a weight's value: make the weights constants of the graph
            names = ()
            traced, used, constants = self.trace(lb, cfg, names)
        graph = CompiledGraph(_compile(traced, self.backend, lb.batch.positions.device), used, names, constants)
        self.compile_seconds.append(time.perf_counter() - start)
        self.graphs.setdefault(self.shape_key(lb), []).append(graph)
        return graph, self.run(graph, lb, cfg)

    def trace(self, lb: LabelledBatch, cfg, names, tracer=lambda step: make_fx(step, tracing_mode="fake")):
        """``tracer(step function)`` (make_fx on fake tensors: the graph module; the identity: the step run eagerly)
        called on the step's inputs -> (its result, used parameters, config constants the loss read)."""
        params = [p.detach().requires_grad_(True) for p in self.module.parameters()]
        used, settings = [], []
        out = tracer(self.step_function(cfg, names, used, settings))(*self.inputs(params, lb, cfg, names))
        return out, list(used), dict(settings[-1].constants)
