"""Several runs of one model configuration trained at once: their weights stacked along a leading axis K, one
``vmap``-ed step for all of them, compiled as one graph (a study's seeds, a committee).

Why: at the recipe's batch of 4 small molecules a GPU waits on kernel launches (eager training on an H100 was no faster
than one CPU core). Stacked, every kernel does the work of K runs for one launch.

The runs stay independent. Each keeps its own ``Trainer``: data, split, seed, frame order, energy normalisation, output
folder and checkpoints. The loss is the sum of the K runs' losses, so its gradient by run k's weights is run k's own
gradient; the optimiser (coupled L2, elementwise clipping, Adam) and the weight average act elementwise with one
schedule. A stacked run therefore takes the steps each run would take alone with the compiled step (to rounding), writes
the same files, and resumes alone (``sake-md train --resume``) or stacked.

Requirements, checked: one model configuration and species list; every frame of every run with the same number of atoms;
the same number of training frames, batch size and epochs (so one learning-rate schedule serves all); fixed epochs, not
a time budget; one process.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from . import compile_train, distributed, objective
from . import train as training
from .batch import Batch
from .console import notify
from .data import LabelledBatch, labelled_batch
from .errors import SakeMDError
from .model import compute_forces, count_parameters
from .predict import TERMS, ErrorSums, batch_terms
from .stacking import StackedPotentials

MAY_DIFFER = ("data", "out", "test", "seed", "progress")  # the settings in which stacked runs may differ


def check_stackable(trainers) -> None:
    """Raise ``SakeMDError`` unless ``trainers`` can share one stacked step and schedule."""
    first = trainers[0]
    base = first.cfg.to_dict()
    for t in trainers:
        cfg = t.cfg.to_dict()
        if differ := sorted(k for k in base if k not in MAY_DIFFER and base[k] != cfg.get(k)):
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
        parts = []
        for data, potential in zip(datasets, potentials, strict=True):
            lb = labelled_batch(data, np.arange(len(data)), potential.species_index, dtype, device)
            b = lb.batch
            parts.append((b.species, b.positions, b.mask, objective.energy_target(lb, potential, dtype), lb.forces))
        self.species, self.positions, self.mask, self.target, self.forces = map(torch.stack, zip(*parts, strict=True))
        self.runs = torch.arange(len(parts), device=device).unsqueeze(1)  # (K, 1): row k takes run k's frames

    def take(self, index: torch.Tensor) -> LabelledBatch:
        """Frames ``index`` (K, B) of each run as one batch (K, B, N) whose ``energy`` is their targets (K, B)."""
        parts = [t[self.runs, index] for t in (self.species, self.positions, self.mask, self.target, self.forces)]
        return LabelledBatch(Batch(*parts[:3]), *parts[3:], None)


class StackedLoss(nn.Module):
    """``compile_train.BatchLoss`` of K runs: their losses (K,), de (K, B), df (K, B, N, 3) on their own frames.
    Its parameters are the runs' stacked weights, its buffer their energy scales (K,)."""

    def __init__(self, potentials):
        super().__init__()
        self.backbones = StackedPotentials(potentials)  # no module: its weights are the parameters below
        self.names = list(self.backbones.params)
        self.weights = nn.ParameterList(nn.Parameter(p, requires_grad=False) for p in self.backbones.params.values())
        self.register_buffer("scale", self.backbones.scale)

    def residuals(self, params, scale, species, positions, mask, target, forces, training: bool = False):
        """Each run's residuals on its own frames, as ``objective.residuals``: de (K, B), df (K, B, N, 3) for
        positions (K, B, N, 3); ``scale`` (K,) the runs' energy scales; ``training``: forces with their graph."""
        x = positions.detach().requires_grad_(True)
        params = dict(zip(self.names, params, strict=True))
        energy = self.backbones.atomic(species, x, mask, params=params, scale=scale).sum(-1)  # as SAKEPotential
        predicted = compute_forces(energy, x, training=training)
        return energy - target, (predicted - forces) * mask.unsqueeze(-1)

    def forward(self, species, positions, mask, target, forces, settings):
        de, df = self.residuals(list(self.weights), self.scale, species, positions, mask, target, forces, training=True)
        return vmap(lambda a, b, m: objective.loss_from(a, b, m, settings))(de, df, mask), de, df


class StackedStep(compile_train.CompiledTrainStep):
    """The compiled step of a ``StackedLoss``: one graph for K runs' batches (K, B, N); ``compile=False``: eagerly."""

    what = "the stacked training step"
    announcement = ("compiling the stacked training step ({K} runs x {B} frames x {N} atoms, {dtype}, {device}); "
                    "minutes the first time")

    def __init__(self, trainers, compile: bool, backend: str, verbose: bool):
        first = trainers[0]
        super().__init__(first.potential, first.cfg.batch_size, int(first.train_set.n_atoms[0]), None, verbose, backend)
        self.module, self.compile = StackedLoss([t.potential for t in trainers]), compile


class StackedTraining:
    """K ``Trainer`` objects stepped together (see the module's docstring): a step of ``train.run_epochs``, the loop
    that also trains one run, which saves each run's files after every epoch. ``compile``, ``backend``: of the step
    (``StackedStep``), as for ``CompiledTrainStep``."""

    def __init__(self, trainers, compile: bool = True, backend: str = "inductor", verbose: bool = True):
        check_stackable(trainers)
        self.trainers, self.verbose = list(trainers), verbose
        first = self.trainers[0]
        self.cfg, self.device, self.dtype = first.cfg, first.device, first.dtype
        self.train_step = StackedStep(self.trainers, compile, backend, verbose)
        self.loss = self.train_step.module
        self.params = list(self.loss.weights)
        cfg = self.cfg
        self.optimizer = objective.PaperAdam(self.params, cfg.lr_start, cfg.betas, cfg.eps, cfg.weight_decay,
                                            cfg.clip, cfg.amsgrad)
        per_run = [[t.optimizer.state.get(p) for p in t.potential.parameters()] for t in self.trainers]
        for i, p in enumerate(self.params):  # each run's optimiser state, stacked
            states = [run[i] for run in per_run]
            if all(states):  # every run has a state (None or empty: not stepped yet)
                self.optimizer.state[p] = {k: (v.clone() if k == "step" else torch.stack([s[k] for s in states]))
                                           for k, v in states[0].items()}
        self.average = objective.WeightAverage(self.loss, cfg.ema_decay) if cfg.ema_decay else None
        if self.average is not None:  # each run's own average, stacked
            shadows = zip(*(t.average.shadow for t in self.trainers), strict=True)
            self.average.load_state_dict([torch.stack(s) for s in shadows])
        pots = [t.potential for t in self.trainers]
        self.train_frames = FrameTensors([t.train_set for t in self.trainers], pots, self.dtype, self.device)
        self.valid_frames = FrameTensors([t.valid_set for t in self.trainers], pots, self.dtype, self.device)
        for t in self.trainers:
            t.state["stacked"] = len(self.trainers)

    def __len__(self) -> int:
        return len(self.trainers)

    # ---- optimiser state: stacked <-> per run -----------------------------------------------------
    @torch.no_grad()
    def sync_run(self, k: int) -> None:
        """Copy run k's weights, weight average and optimiser state into its own Trainer."""
        t, lr = self.trainers[k], objective.learning_rate(self.trainers[0].progress(), self.cfg)
        for p, stacked in zip(t.potential.backbone.parameters(), self.params, strict=True):
            p.copy_(stacked[k])
        if self.average is not None:
            t.average.load_state_dict([stacked[k] for stacked in self.average.shadow])
        sd, state = t.optimizer.state_dict(), self.optimizer.state  # run k's share of the stacked state, as its own
        sd["state"] = {i: {key: (v.clone() if key == "step" else v[k].clone()) for key, v in state[p].items()}
                       for i, p in enumerate(self.params) if p in state}
        for group in sd["param_groups"]:
            group["lr"] = lr
        t.optimizer.load_state_dict(sd)

    # ---- the step -----------------------------------------------------------------------------------
    @property
    def compile_seconds(self) -> float | None:
        """Seconds that compiling the step took; None: not compiled."""
        return None if self.train_step.failed else ([None] + self.train_step.compile_seconds)[-1]

    # ---- epochs -------------------------------------------------------------------------------------
    def epoch_index(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's batches of one epoch, in its own frame order: index (steps, K, B) and the weight of
        each batch position (steps, B), 0 where the last, partial batch repeats its own frames."""
        b, n, steps = self.cfg.batch_size, len(self.trainers[0].train_set), self.trainers[0].steps_per_epoch()
        index, weight = np.empty((steps, len(self), b), dtype=np.int64), np.zeros((steps, b))  # weight: float64
        for k, t in enumerate(self.trainers):
            for s, chunk in enumerate(t.local_indices(training.shuffled_order(n, t.cfg.seed, epoch))):
                index[s, k] = chunk[np.arange(b) % len(chunk)]
                weight[s, :len(chunk)] = 1.0
        return torch.from_numpy(index).to(self.device), torch.from_numpy(weight).to(self.device)

    def train_epoch(self, bar=None) -> list[ErrorSums]:
        """One epoch of every run -> each run's errors over its real frames."""
        lead = self.trainers[0]
        index, weight = self.epoch_index(lead.state["epoch"])
        sums = torch.zeros(len(self), len(TERMS), dtype=torch.float64, device=self.device)
        for s in range(index.shape[0]):
            batch = self.train_frames.take(index[s])
            for group in self.optimizer.param_groups:
                group["lr"] = objective.learning_rate(lead.progress(), self.cfg)
            losses, de, df = self.train_step(batch, lead.loss_settings())  # (K,), (K, B), (K, B, N, 3)
            self.optimizer.step()
            if self.average is not None:
                self.average.update()
            sums += batch_terms(de, df, batch.batch.mask, weight[s])
            lead.state["step"] += 1
        return [ErrorSums(row) for row in sums.cpu()]

    def validate(self, chunk: int = 64) -> list[ErrorSums]:
        """Each run's errors of its weight average (or weights) on its validation frames."""
        params = [p.detach() for p in (self.params if self.average is None else self.average.shadow)]
        v = self.valid_frames
        sums = torch.zeros(len(self), len(TERMS), dtype=torch.float64, device=self.device)
        for start in range(0, v.species.shape[1], chunk):
            cut = slice(start, start + chunk)
            with torch.enable_grad():
                de, df = self.loss.residuals(params, self.loss.scale, v.species[:, cut], v.positions[:, cut],
                                             v.mask[:, cut], v.target[:, cut], v.forces[:, cut])
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
    device = training.resolve_training_device(cfg)
    trainers = [training.Trainer(c, distributed.Context(), device) for c in cfgs]
    for t in trainers:
        training.open_run(t, resume)
    print(f"training {len(trainers)} runs of {cfg.model.variant} together "
          f"({count_parameters(trainers[0].potential)} parameters each) on {device}, {cfg.dtype}", flush=True)
    training.run_epochs(StackedTraining(trainers, compile=compile and cfg.compile, backend=backend), on_epoch_end)
    if finalize:
        for t, c, out in zip(trainers, cfgs, outs, strict=True):
            training.finalize(c, out, t.train_set)
    return [out / "best.pt" for out in outs]
