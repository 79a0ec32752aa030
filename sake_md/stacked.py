"""Several runs of one model configuration trained at once: their weights stacked along a leading axis K,
one ``vmap``-ed step for all of them, compiled as one graph (a study's seeds, a committee).

Why: at the recipe's batch of 4 small molecules a GPU waits on kernel launches (eager training on an H100
was no faster than one CPU core). Stacked, every kernel does the work of K runs for one launch.

The runs stay independent. Each keeps its own ``Trainer``: data, split, seed, frame order, energy
normalisation, output folder and checkpoints. The loss is the sum of the K runs' losses, so its gradient
by run k's weights is run k's own gradient; the optimiser (coupled L2, elementwise clipping, Adam) and
the weight average act elementwise with one schedule. A stacked run therefore takes the steps each run
would take alone with the compiled step (to rounding), writes the same files, and resumes alone
(``sake-md train --resume``) or stacked.

Requirements, checked: one model configuration and species list; every frame of every run with the same
number of atoms; the same number of training frames, batch size and epochs (so one learning-rate schedule
serves all); fixed epochs, not a time budget; one process.
"""

import time
from pathlib import Path

import numpy as np
import torch
from torch.func import vmap
from torch.fx.experimental.proxy_tensor import make_fx

from . import compile_train, distributed, objective
from . import train as training
from .compile import compiled_or_none
from .console import notify
from .errors import SakeMDError
from .model import compute_forces, count_parameters
from .predict import TERMS, ErrorSums, batch_terms
from .stacking import StackedModules

MAY_DIFFER = ("data", "out", "test", "seed", "progress")  # the settings in which stacked runs may differ


def check_stackable(trainers) -> None:
    """Raise ``SakeMDError`` unless ``trainers`` can share one stacked step and schedule."""
    first = trainers[0]
    base = {k: v for k, v in first.cfg.to_dict().items() if k not in MAY_DIFFER}
    for t in trainers:
        cfg = {k: v for k, v in t.cfg.to_dict().items() if k not in MAY_DIFFER}
        differ = sorted(k for k in base if base[k] != cfg.get(k))
        if differ:
            raise SakeMDError(f"runs trained together must share every setting but {', '.join(MAY_DIFFER)}; "
                              f"{t.cfg.out} differs in {', '.join(differ)}")
        if t.potential.atomic_numbers != first.potential.atomic_numbers:
            raise SakeMDError(f"runs trained together need one species list: {t.cfg.out} knows "
                              f"{t.potential.atomic_numbers}, {first.cfg.out} {first.potential.atomic_numbers}")
        if len(t.train_set) != len(first.train_set) or len(t.valid_set) != len(first.valid_set):
            raise SakeMDError("runs trained together need the same numbers of training and validation frames "
                              f"({t.cfg.out}: {len(t.train_set)}/{len(t.valid_set)}, {first.cfg.out}: "
                              f"{len(first.train_set)}/{len(first.valid_set)})")
        sizes = set(t.train_set.n_atoms.tolist()) | set(t.valid_set.n_atoms.tolist())
        if sizes != {int(first.train_set.n_atoms[0])}:
            raise SakeMDError(f"runs trained together need one molecule size; {t.cfg.out} has frames of "
                              f"{sorted(sizes)} atoms, {first.cfg.out} of {int(first.train_set.n_atoms[0])}")
        if t.state["epoch"] != first.state["epoch"] or t.state["step"] != first.state["step"]:
            raise SakeMDError(f"runs trained together must be at the same epoch: {t.cfg.out} is at "
                              f"{t.state['epoch']}, {first.cfg.out} at {first.state['epoch']}")
    if first.cfg.timed:
        raise SakeMDError("runs trained together need a fixed number of epochs (not a time budget)")
    if first.potential.cutoff is not None:
        raise SakeMDError("runs trained together must be dense (molecular) models")
    if first.ctx.active:
        raise SakeMDError("runs trained together run in one process (no DDP)")


class FrameTensors:
    """All frames of K runs' datasets on the device, stacked: species, mask (K, T, N), positions,
    forces (K, T, N, 3), energy targets (K, T) (``objective.energy_target``), in the model dtype."""

    def __init__(self, datasets, potentials, dtype, device):
        from .data import labelled_batch

        parts = []
        for data, potential in zip(datasets, potentials, strict=True):
            lb = labelled_batch(data, np.arange(len(data)), potential.species_index, dtype, device)
            b = lb.batch
            parts.append((b.species, b.positions, b.mask, objective.energy_target(lb, potential, dtype), lb.forces))
        self.species, self.positions, self.mask, self.target, self.forces = (
            torch.stack(t) for t in zip(*parts, strict=True))
        self.runs = torch.arange(len(parts), device=device).unsqueeze(1)  # (K, 1): row k takes run k's frames

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frames ``index`` (K, B) of each run -> (species, positions, mask, target, forces) for (K, B)."""
        k = self.runs
        return (self.species[k, index], self.positions[k, index], self.mask[k, index], self.target[k, index],
                self.forces[k, index])


class StackedTraining:
    """K ``Trainer`` objects stepped together (see the module's docstring): a step of ``train.run_epochs``, the
    loop that also trains one run, which saves each run's files after every epoch.

    ``compile``: the step as one compiled graph (``backend``, as ``CompiledTrainStep``); if tracing or
    compiling fails, the same step runs eagerly after one warning.
    """

    def __init__(self, trainers, compile: bool = True, backend: str = "inductor", verbose: bool = True):
        check_stackable(trainers)
        self.trainers, self.verbose = list(trainers), verbose
        first = self.trainers[0]
        self.cfg, self.device, self.dtype = first.cfg, first.device, first.dtype
        self.backbones = StackedModules([t.potential.backbone for t in self.trainers])
        self.names, self.params = list(self.backbones.params), list(self.backbones.params.values())
        self.scale = torch.tensor([t.potential.energy_scale for t in self.trainers], dtype=self.dtype,
                                  device=self.device)
        cfg = self.cfg
        self.optimizer = objective.PaperAdam(self.params, cfg.lr_start, cfg.betas, cfg.eps, cfg.weight_decay,
                                            cfg.clip, cfg.amsgrad)
        self._stack_optimizer_state()
        self.shadow = None
        if cfg.ema_decay:
            self.shadow = [torch.stack(list(s)).contiguous()
                           for s in zip(*(t.average.shadow for t in self.trainers), strict=True)]
        pots = [t.potential for t in self.trainers]
        self.train_frames = FrameTensors([t.train_set for t in self.trainers], pots, self.dtype, self.device)
        self.valid_frames = FrameTensors([t.valid_set for t in self.trainers], pots, self.dtype, self.device)
        self.compile, self.backend = compile, backend
        self.fn, self.failed, self.compile_seconds = None, False, None
        self._weights: tuple[tuple, torch.Tensor] | None = None  # (values, device tensor) of the loss weights
        for t in self.trainers:
            t.state["stacked"] = len(self.trainers)

    def __len__(self) -> int:
        return len(self.trainers)

    # ---- optimiser state: stacked <-> per run -----------------------------------------------------
    def _stack_optimizer_state(self) -> None:
        per_run = [[t.optimizer.state.get(p) for p in t.potential.parameters()] for t in self.trainers]
        for i, p in enumerate(self.params):
            states = [run[i] for run in per_run]
            if any(s is None or not s for s in states):
                continue
            self.optimizer.state[p] = {k: (v.clone() if k == "step" else torch.stack([s[k] for s in states]))
                                       for k, v in states[0].items()}

    def _run_optimizer_state(self, k: int, lr: float) -> dict:
        """Run k's share of the stacked optimiser state, as its own optimiser's ``state_dict``."""
        sd = self.trainers[k].optimizer.state_dict()
        stacked = self.optimizer.state
        sd["state"] = {i: {key: (v.clone() if key == "step" else v[k].clone()) for key, v in stacked[p].items()}
                       for i, p in enumerate(self.params) if p in stacked}
        for group in sd["param_groups"]:
            group["lr"] = lr
        return sd

    @torch.no_grad()
    def sync_run(self, k: int) -> None:
        """Copy run k's weights, weight average and optimiser state into its own Trainer."""
        t, lr = self.trainers[k], objective.learning_rate(self.trainers[0].progress(), self.cfg)
        for p, stacked in zip(t.potential.backbone.parameters(), self.params, strict=True):
            p.copy_(stacked[k])
        if self.shadow is not None:
            for avg, stacked in zip(t.average.shadow, self.shadow, strict=True):
                avg.copy_(stacked[k])
        t.optimizer.load_state_dict(self._run_optimizer_state(k, lr))

    # ---- the step -----------------------------------------------------------------------------------
    def energies(self, params, scale, species, positions, mask):
        """Model energies (K, B) of each run's own frames, with the graph to ``positions`` (K, B, N, 3);
        ``scale`` (K,) the runs' energy scales."""
        y = self.backbones(species, positions, mask, params=dict(zip(self.names, params, strict=True)))
        return (scale.view(-1, 1, 1) * y).sum(-1)  # as SAKEPotential: scale per atom, then the sum

    def step_function(self, cfg, names: tuple[str, ...]):
        """(params..., scale, species, positions, mask, target, forces, weights) -> (losses (K,), de, df, *grads)."""
        n_p = len(self.params)

        def step(*flat):
            ps = flat[:n_p]
            scale, species, positions, mask, target, forces, weights = flat[n_p:]
            view = compile_train.TracedSettings(cfg, {k: weights[i] for i, k in enumerate(names)})
            x = positions.detach().requires_grad_(True)
            energy = self.energies(ps, scale, species, x, mask)
            predicted = compute_forces(energy, x, training=True)
            de = energy - target
            df = (predicted - forces) * mask.unsqueeze(-1)
            losses = vmap(lambda a, b, m: objective.loss_from(a, b, m, view))(de, df, mask)
            grads = torch.autograd.grad(losses.sum(), ps, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ps, grads, strict=True)]
            return (losses.detach(), de.detach(), df.detach(), *grads)

        return step

    def loss_weights(self, cfg, names) -> torch.Tensor:
        """The loss's float settings as a device tensor, made again only when they change: a new host-to-device
        copy every step would wait for the GPU each time."""
        values = tuple(float(getattr(cfg, k)) for k in names)
        if self._weights is None or self._weights[0] != values:
            self._weights = (values, torch.tensor(values, dtype=self.dtype, device=self.device).reshape(len(values)))
        return self._weights[1]

    def inputs(self, batch, cfg, names) -> list[torch.Tensor]:
        return [*(p.detach() for p in self.params), self.scale, *batch, self.loss_weights(cfg, names)]

    def build(self, batch, cfg) -> None:
        """Trace and compile the step for this batch shape (one call compiles it; its result is dropped)."""
        names = compile_train.weight_names(cfg)
        self.weight_names = names
        if not self.compile:
            self.fn = self.step_function(cfg, names)
            return
        B = batch[0].shape[1]
        notify(f"compiling the stacked training step ({len(self)} runs x {B} frames x {batch[0].shape[2]} atoms, "
               f"{self.dtype}, {self.device}); minutes the first time", self.verbose)
        start = time.perf_counter()

        def compiled():
            params = [p.detach().requires_grad_(True) for p in self.params]
            flat = [*params, self.scale, *batch, torch.zeros(len(names), dtype=self.dtype, device=self.device)]
            graph = make_fx(self.step_function(cfg, names), tracing_mode="fake")(*flat)
            fn = compile_train._compile(graph, self.backend, self.device)
            with torch.no_grad():
                fn(*self.inputs(batch, cfg, names))  # torch.compile compiles on the first call
            return fn

        fn, reason = compiled_or_none(compiled, "the stacked training step", "training eagerly")
        if reason is not None:
            self.failed, self.fn = True, self.step_function(cfg, names)
            return
        self.fn, self.compile_seconds = fn, time.perf_counter() - start
        notify(f"compiled the stacked training step in {self.compile_seconds:.0f} s", self.verbose)

    def step(self, batch, cfg):
        """One optimiser step of every run on ``batch`` (K, B, ...) -> losses (K,), de (K, B), df (K, B, N, 3)."""
        if self.fn is None:
            self.build(batch, cfg)
        if self.compile and not self.failed:  # the compiled graph takes the weights as plain inputs
            with torch.no_grad():
                losses, de, df, *grads = self.fn(*self.inputs(batch, cfg, self.weight_names))
        else:
            params = [p.detach().requires_grad_(True) for p in self.params]
            losses, de, df, *grads = self.fn(*params, self.scale, *batch, self.loss_weights(cfg, self.weight_names))
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.detach()
        self.optimizer.step()
        if self.shadow is not None:
            torch._foreach_lerp_(self.shadow, self.params, 1.0 - cfg.ema_decay)
        return losses, de, df

    # ---- epochs -------------------------------------------------------------------------------------
    def epoch_index(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's batches of one epoch, in its own frame order: index (steps, K, B) and the weight of
        each batch position (steps, B), 0 where the last, partial batch repeats its own frames."""
        b, n = self.cfg.batch_size, len(self.trainers[0].train_set)
        steps = self.trainers[0].steps_per_epoch()
        index = np.empty((steps, len(self), b), dtype=np.int64)
        weight = np.zeros((steps, b))
        for k, t in enumerate(self.trainers):
            order = training.shuffled_order(n, t.cfg.seed, epoch)
            for s in range(steps):
                chunk = order[s * b:(s + 1) * b]
                index[s, k] = chunk[np.arange(b) % len(chunk)]
                weight[s, :len(chunk)] = 1.0
        return (torch.from_numpy(index).to(self.device),
                torch.from_numpy(weight).to(device=self.device, dtype=torch.float64))

    def train_epoch(self, bar=None) -> list[ErrorSums]:
        """One epoch of every run -> each run's errors over its real frames."""
        lead = self.trainers[0]
        index, weight = self.epoch_index(lead.state["epoch"])
        sums = torch.zeros(len(self), len(TERMS), dtype=torch.float64, device=self.device)
        for s in range(index.shape[0]):
            batch = self.train_frames.take(index[s])
            lr = objective.learning_rate(lead.progress(), self.cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses, de, df = self.step(batch, lead.loss_settings())
            sums += batch_terms(de, df, batch[2], weight[s])
            lead.state["step"] += 1
        return [ErrorSums(row) for row in sums.cpu()]

    def validate(self, chunk: int = 64) -> list[ErrorSums]:
        """Each run's errors of its weight average (or weights) on its validation frames."""
        params = self.shadow if self.shadow is not None else self.params
        params = [p.detach() for p in params]
        v = self.valid_frames
        sums = torch.zeros(len(self), len(TERMS), dtype=torch.float64, device=self.device)
        for start in range(0, v.species.shape[1], chunk):
            cut = slice(start, start + chunk)
            x = v.positions[:, cut].detach().requires_grad_(True)
            with torch.enable_grad():
                energy = self.energies(params, self.scale, v.species[:, cut], x, v.mask[:, cut])
                predicted = compute_forces(energy, x)
            de = energy.detach() - v.target[:, cut]
            df = (predicted - v.forces[:, cut]) * v.mask[:, cut].unsqueeze(-1)
            sums += batch_terms(de, df, v.mask[:, cut])
        return [ErrorSums(row) for row in sums.cpu()]

    def report_epoch(self, row: dict, bar) -> None:
        lead = self.trainers[0]
        notify(f"stacked epoch {lead.state['epoch']}/{lead.state['planned_epochs']} ({len(self)} runs, "
               f"{row['seconds']:.1f} s)", self.verbose)

def train_stacked(cfgs, resume: bool = False, on_epoch_end=None, finalize: bool = True, compile: bool = True,
                  backend: str = "inductor") -> list[Path]:
    """``train.train`` for several runs at once (see the module's docstring). ``resume``: continue each
    run from its last.pt (all at the same epoch). ``finalize``: re-centre the energy shift and attach the
    test errors, as ``train`` does at the end. Returns the best.pt paths."""
    cfgs = [training.run_config(c, resume) for c in cfgs]
    outs = [Path(c.out) for c in cfgs]
    if len(set(outs)) != len(outs):
        raise SakeMDError("runs trained together need distinct output folders")
    cfg = cfgs[0]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = training.resolve_training_device(cfg.device)
    trainers = [training.Trainer(c, distributed.Context(), device) for c in cfgs]
    for t in trainers:
        training.open_run(t, resume)
    print(f"training {len(trainers)} runs of {cfg.model.variant} together "
          f"({count_parameters(trainers[0].potential)} parameters each) on {device}, {cfg.dtype}",
          flush=True)
    training.run_epochs(StackedTraining(trainers, compile=compile and cfg.compile, backend=backend), on_epoch_end)
    if finalize:
        for t, c, out in zip(trainers, cfgs, outs, strict=True):
            training.finalize(c, out, t.train_set)
    return [out / "best.pt" for out in outs]
