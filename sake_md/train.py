"""Training: one run (``Trainer``) from data to best.pt, with the objective of ``sake_md.objective``.

With a time budget the number of epochs is estimated after the first few steps and re-measured after every epoch (epochs
that fit = done + remaining time / recent epoch time); the schedule is laid over it.

Output folder: config.json (the exact settings), metrics.jsonl (one line per epoch), last.pt and best.pt (best on
validation force MAE), written atomically after every epoch. ``resume=True`` continues from last.pt with the same
optimiser state, schedule and frame order: a killed run loses at most one epoch.
"""

import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, objective
from .allocator import keep_freed_memory
from .checkpoint import load_checkpoint, potential_from_dict, read_checkpoint, save_checkpoint
from .compile import AUTO_FACTOR, compiler_unavailable, should_compile
from .compile_train import CompiledTrainStep
from .console import notify, warn
from .data import Dataset, LabelledBatch, labelled_batch, shuffled_order, split
from .devices import resolve_device
from .errors import DataError, SakeMDError
from .evaluate import evaluate, format_report
from .model import SAKEPotential, count_parameters
from .objective import RECIPES, EnergyAndForces, PaperAdam, TrainConfig, learning_rate, loss_from, residuals
from .predict import ErrorSums, predict, predict_batches

__all__ = ["MAX_COMPOSITIONS", "MIN_EPOCHS", "Trainer", "run_epochs", "run_config", "open_run", "load_split",
           "resolve_training_device", "train", "finalize", "finalized", "read_config", "energy_offset",
           # and, re-exported from sake_md.objective, the training API:
           "RECIPES", "EnergyAndForces", "PaperAdam", "TrainConfig", "learning_rate", "loss_from", "residuals"]

MAX_COMPOSITIONS = 100  # recorded in checkpoints (data of more compositions: none recorded)
MIN_EPOCHS = 20  # fewer leave a model far from trained (the shipped ethanol potential: 168 epochs of 30 min)


class Trainer:
    """One run: data, model, optimiser, schedule, output folder. ``fit`` trains; state lives in ``self.state``."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context, device: torch.device):
        self.cfg, self.ctx, self.device, self.dtype = cfg, ctx, device, getattr(torch, cfg.dtype)
        self.out = Path(cfg.out)
        self.train_set, self.valid_set = load_split(cfg)
        # what the model was trained on, so that eval and compare can say when frames are of something else
        compositions = self.train_set.compositions
        self.compositions = None if len(compositions) > MAX_COMPOSITIONS else [list(map(list, c)) for c in compositions]
        self.state = {"epoch": 0, "step": 0, "planned_epochs": cfg.epochs or 0, "seconds": 0.0,
                      "epoch_seconds": [], "best_val_force_mae_meV_A": None, "best_epoch": None}
        self.potential = self.build_potential().to(device=device, dtype=self.dtype)
        self.model = EnergyAndForces(self.potential)
        if ctx.active:
            # gradients of (1, n) parameters come with strides (1, 1) where DDP's bucket views have (n, 1): the
            # same memory layout, so DDP's warning about it (once per process) says nothing to a user
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        self.optimizer = PaperAdam(self.potential.parameters(), cfg.lr_start, cfg.betas, cfg.eps, cfg.weight_decay,
                                   cfg.clip, cfg.amsgrad)
        self.average = objective.WeightAverage(self.potential, cfg.ema_decay) if cfg.ema_decay else None
        self.step = self.eager_step
        self.trainers = [self]  # the runs that this trains (``run_epochs``); a ``StackedTraining`` trains several
        if self.potential.cutoff is not None:
            keep_freed_memory()  # see sake_md.allocator
            if cfg.compile is True:
                raise SakeMDError("--compile trains dense (molecular) models; a model with --cutoff trains eagerly")
        if cfg.compile is True:
            self.step = CompiledTrainStep.for_trainer(self)

    def choose_step(self) -> None:
        """compile="auto": pick the training step for the work left (``open_run`` calls this after a resume has
        restored the progress: a resumed run repays a compile only with its remaining epochs)."""
        if self.cfg.compile == "auto":
            self.step = self.auto_step()

    def auto_step(self):
        """compile="auto": the compiled step when the run's expected training time left exceeds ``AUTO_FACTOR`` ×
        the expected compile time (the inference rule), else the eager one; sparse models have no compiled step.
        Says which, once."""
        step = self.eager_step
        why = ("a sparse (--cutoff) model has no compiled training step" if self.potential.cutoff is not None
               else compiler_unavailable(self.device))
        if why is None:
            compiled = CompiledTrainStep.for_trainer(self)
            compile_s, basis = compiled.expected_compile_s()
            left = " left" if self.state["epoch"] else ""
            if self.cfg.timed:
                work_s, what = max(self.cfg.time_budget - self.state["seconds"], 0.0), f"a budget{left} of"
            else:  # one eager step on the first batch, timed at its second call; gradients discarded, weights untouched
                lb = labelled_batch(self.train_set, np.arange(min(self.cfg.batch_size, len(self.train_set))),
                                    self.potential.species_index, self.dtype, self.device)
                self.eager_step(lb, self.cfg)
                start = time.perf_counter()
                self.eager_step(lb, self.cfg)
                step_s = time.perf_counter() - start
                self.optimizer.zero_grad(set_to_none=True)
                epochs = max(self.cfg.epochs - self.state["epoch"], 0)
                work_s, what = epochs * self.steps_per_epoch() * step_s, f"{epochs} epochs{left}, about"
            if should_compile(1, work_s, compile_s):
                step = compiled
            why = (f"{what} {work_s / 60:.1f} min of training vs ~{compile_s:.0f} s to compile the step ({basis}); "
                   f"rule: training time > {AUTO_FACTOR:g} × compile time")
        notify(f"compile=auto: {why} -> {'eager' if step == self.eager_step else 'compiled'} training step",
               self.ctx.main)
        return step

    def build_potential(self) -> SAKEPotential:
        torch.manual_seed(self.cfg.seed)
        species = sorted(set(self.train_set.species) | set(self.valid_set.species))
        if self.cfg.init:
            return initial_potential(self.cfg, species)
        energies = self.train_set.energy
        scale = self.cfg.energy_scale or (float(energies.std()) if len(energies) > 1 and energies.std() > 0 else 1.0)
        return SAKEPotential(species, self.cfg.model, energy_scale=scale, energy_shift=float(energies.mean()))

    def finished(self) -> bool:
        """Whether the planned epochs are done (a budget run: no time left for another epoch), replanned first."""
        if self.state["epoch"] == 0:
            return False
        self.replan()  # budget mode only
        return self.state["epoch"] >= self.state["planned_epochs"]

    # ---- schedule -------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        n, b = len(self.train_set), self.cfg.batch_size
        return n // b if self.ctx.active and n % b and n % b < self.ctx.world else math.ceil(n / b)

    def progress(self) -> float:
        planned = self.state["planned_epochs"]
        return self.state["step"] / (planned * self.steps_per_epoch()) if planned > 0 else 0.0

    def loss_settings(self) -> TrainConfig:
        """The settings the loss reads now: the energy stage raises the energy weight at the end."""
        cfg = self.cfg
        if cfg.stage_fraction and cfg.stage_energy_weight is not None and self.progress() >= 1 - cfg.stage_fraction:
            return dataclasses.replace(cfg, energy_weight=cfg.stage_energy_weight)
        return cfg

    def evaluated_weights(self):
        """Context in which the model holds the weights that are validated and saved (the average, if any)."""
        return self.average.swapped() if self.average is not None else contextlib.nullcontext()

    def replan(self, step_seconds: float | None = None) -> None:
        """Budget mode: epochs that fit = epochs done + remaining time / recent epoch time (the first epoch's without
        a compile on its first step: it is spent, not to be spent again). The first plan (from ``step_seconds``, in
        epoch 0) says when the budget fits fewer than ``MIN_EPOCHS`` epochs, and what would."""
        if not self.cfg.timed:
            return
        recent = self.state["epoch_seconds"][-5:]
        epoch_s = float(np.mean(recent)) if recent else step_seconds * self.steps_per_epoch()
        per_epoch = distributed.all_max(self.ctx, epoch_s)
        fit = int(max(self.cfg.time_budget - self.state["seconds"], 0.0) // max(per_epoch, 1e-9))
        planned = self.state["planned_epochs"] = self.state["epoch"] + max(fit, 0 if recent else 1)  # ints
        if step_seconds is None or planned >= MIN_EPOCHS or not self.ctx.main:
            return
        need = MIN_EPOCHS * epoch_s + self.state["seconds"]
        warn(f"the time budget of {self.cfg.time_budget:.0f} s fits only about {planned} epoch(s) of {epoch_s:.0f} s: "
             f"a model trained for fewer than {MIN_EPOCHS} epochs is far from trained (the shipped ethanol "
             f"potential: 168 epochs). {MIN_EPOCHS} epochs need about --time-budget {math.ceil(need / 60)}m on "
             "this machine.")

    # ---- one epoch -------------------------------------------------------------------------------
    def local_indices(self, order: np.ndarray):
        """Global batches of ``order``; each process takes its share of every global batch."""
        b, world = self.cfg.batch_size, self.ctx.world
        chunks = (order[start:start + b] for start in range(0, len(order), b))
        return (np.array_split(chunk, world)[self.ctx.rank] for chunk in chunks if len(chunk) >= world)

    def train_epoch(self, bar=None) -> list[ErrorSums]:
        """One epoch of optimiser steps -> [the running errors of the batches trained on]."""
        self.model.train()
        errors = ErrorSums()
        order = shuffled_order(len(self.train_set), self.cfg.seed, self.state["epoch"])
        plan_at = min(3, self.steps_per_epoch() - 1)  # the step after which epoch 0 plans a time budget's epochs
        start = t0 = time.perf_counter()
        for k, idx in enumerate(self.local_indices(order)):
            lb = labelled_batch(self.train_set, idx, self.potential.species_index, self.dtype, self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.progress(), self.cfg)
            loss, de, df = self.step(lb, self.loss_settings())
            self.optimizer.step()
            if self.average is not None:
                self.average.update()
            self.state["step"] += 1
            errors.add_batch(de, df, lb.batch.mask)
            if k == 0:  # the first call may compile the step (minutes): steps 1-3 time the ones that follow
                t0 = time.perf_counter()
            if k == plan_at and self.state["epoch"] == 0:
                step_s = (time.perf_counter() - t0) / k if k else time.perf_counter() - start
                # the compile: left out of the epoch times that plan a budget and estimate the run's length
                self.state["startup_s"] = max(t0 - start - step_s, 0.0) if k else 0.0
                self.replan(step_seconds=step_s)
            if bar is not None:
                bar.set_postfix_str(f"loss {float(loss.detach()):.3f}", refresh=False)
        return [errors]

    def eager_step(self, lb: LabelledBatch, cfg: TrainConfig):
        """Forward, forces, loss and its gradients (into p.grad) for one batch -> loss, de, df."""
        b = lb.batch
        energy_model, forces = self.model(b.species, b.positions, b.mask, b.cell, b.pbc)
        de, df = objective.residuals(energy_model, forces, lb, self.potential)
        loss = objective.loss_from(de, df, b.mask, cfg)  # looked up at call time, as the compiled step does
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, de, df

    def validate(self) -> list[ErrorSums]:
        """[Errors of the evaluated weights on this process's share of the validation frames]."""
        self.model.eval()
        errors = ErrorSums()
        share = np.array_split(np.arange(len(self.valid_set)), self.ctx.world)[self.ctx.rank]
        with self.evaluated_weights():
            for lb, out in predict_batches(self.potential, self.valid_set, max(self.cfg.batch_size, 32), order=share):
                de, df = objective.residuals(out["energy_model"], out["forces"], lb, self.potential)
                errors.add_batch(de, df, lb.batch.mask)
        return [errors]

    def sync_run(self, k: int) -> None:
        """Nothing to copy: the weights live in this run's own model (``StackedTraining`` copies its back)."""

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self, on_epoch_end=None) -> dict:
        """Train until the planned epochs are done. ``on_epoch_end(trainer, row)`` runs after each save."""
        return run_epochs(self, on_epoch_end)

    def report_epoch(self, row: dict, bar) -> None:
        """The console after an epoch: what the run will take (after the first), the progress bar."""
        if self.state["epoch"] == 1 and not self.cfg.timed and self.ctx.main:
            epoch_s = self.state["epoch_seconds"][-1]  # without the first step's compile
            startup = row["seconds"] - epoch_s
            of_which = f" ({startup:.0f} s of it compiling the step)" if startup >= 0.1 * row["seconds"] else ""
            notify(f"epoch 1 took {row['seconds']:.1f} s{of_which}: {self.cfg.epochs} epochs take about "
                   f"{_duration(row['seconds'] + (self.cfg.epochs - 1) * epoch_s)} at this speed")
        if bar is not None:
            bar.total = self.state["planned_epochs"]
            bar.set_postfix_str(f"F {row['train_force_mae_meV_A']:.1f}/{row['val_force_mae_meV_A']:.1f} "
                                f"E {row['train_energy_mae_meV']:.1f}/{row['val_energy_mae_meV']:.1f} "
                                f"meV(/Å) train/val lr {row['lr']:.1e}")
            bar.update(1)

    # ---- output folder ---------------------------------------------------------------------------
    def save(self, row: dict) -> None:
        if not self.ctx.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        is_best = (self.cfg.select == "last" or (best := self.state["best_val_force_mae_meV_A"]) is None
                   or row["val_force_mae_meV_A"] <= best)
        if is_best:
            self.state.update(best_val_force_mae_meV_A=row["val_force_mae_meV_A"], best_epoch=self.state["epoch"])
        metrics = {"validation": {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")},
                   "epoch": self.state["epoch"]}
        extra = {"optimizer": self.optimizer.state_dict(), "state": dict(self.state),
                 "torch_rng_state": torch.get_rng_state(), "config": self.cfg.to_dict()}
        if self.average is not None:
            extra["weight_average"] = self.average.state_dict()
        save_checkpoint(self.out / "last.pt", self.potential, self.training_metadata(), metrics, extra)
        if is_best:
            with self.evaluated_weights():
                save_checkpoint(self.out / "best.pt", self.potential, self.training_metadata(), metrics)

    def training_metadata(self) -> dict:
        s, cfg = self.state, self.cfg
        return {"data": str(Path(cfg.data).resolve()), "test_data": cfg.test,
                "split": {"seed": cfg.seed, "train_frames": len(self.train_set), "valid_frames": len(self.valid_set)},
                "compositions": self.compositions, "recipe": cfg.recipe, "epochs": s["epoch"],
                "planned_epochs": s["planned_epochs"], "seconds": round(s["seconds"], 1),
                "samples_per_s": round(s["step"] * cfg.batch_size / max(s["seconds"], 1e-9), 1),
                "processes": self.ctx.world, "device": str(self.device), "dtype": cfg.dtype,
                "best_epoch": s["best_epoch"], "stacked": s.get("stacked", 1),
                "settings": {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out", "test", "progress")}}

    def restore(self) -> None:
        """Load weights, optimiser state and progress from ``out/last.pt``; drop log lines after it."""
        data = read_checkpoint(self.out / "last.pt")
        extra = data.get("extra") or {}
        if "optimizer" not in extra or "state" not in extra:
            raise SakeMDError(f"{self.out / 'last.pt'} holds no training state to resume from")
        restored = potential_from_dict(data, str(self.out / "last.pt"))
        self.potential.load_state_dict(restored.state_dict())
        self.potential.energy_scale, self.potential.energy_shift = restored.energy_scale, restored.energy_shift
        self.optimizer.load_state_dict(extra["optimizer"])
        if self.average is not None:
            if "weight_average" not in extra:
                raise SakeMDError(f"{self.out / 'last.pt'} has no weight average to resume the EMA from")
            self.average.load_state_dict(extra["weight_average"])
        self.state.update(extra["state"])
        torch.set_rng_state(extra["torch_rng_state"])
        log = self.out / "metrics.jsonl"
        if self.ctx.main and log.exists():
            rows = [line for line in log.read_text().splitlines() if line.strip()]
            log.write_text("".join(r + "\n" for r in rows if json.loads(r)["epoch"] <= self.state["epoch"]))


def run_epochs(step, on_epoch_end=None) -> dict:
    """The one epoch loop, whatever the step: a ``Trainer`` (its eager or compiled step) or a ``StackedTraining``.

    ``step`` trains an epoch (``train_epoch(bar)``) and validates (``validate()``), each -> one ``ErrorSums`` per
    run of ``step.trainers``, copies run k's weights into its ``Trainer`` (``sync_run(k)``) and reports
    (``report_epoch(row, bar)``). Here: each run's row, state, replanning and files (``Trainer.save``), then
    ``on_epoch_end(trainer, row)``, until the lead run's planned epochs are done. Returns the last row.
    """
    runs, lead = step.trainers, step.trainers[0]
    bar, row = None, {}
    if len(runs) == 1 and lead.cfg.progress and lead.ctx.main:  # a progress bar for one run
        bar = tqdm(total=lead.state["planned_epochs"] or None, initial=lead.state["epoch"], unit="epoch",
                   mininterval=5.0, dynamic_ncols=True)
    # each run's energy and force MAE/RMSE (meV, meV/Å) over all processes, as train_energy_mae_meV etc.
    names = ("energy_mae_meV", "energy_rmse_meV", "force_mae_meV_A", "force_rmse_meV_A")
    total = functools.partial(distributed.all_sum, lead.ctx)
    while not lead.finished():
        start = time.perf_counter()
        lr = learning_rate(lead.progress(), lead.cfg)
        train_errors, valid_errors = step.train_epoch(bar), step.validate()
        seconds = distributed.all_max(lead.ctx, time.perf_counter() - start)
        for k, t in enumerate(runs):
            row = {"epoch": t.state["epoch"] + 1, "lr": lr, **train_errors[k].summary(names, "train_", total),
                   **valid_errors[k].summary(names, "val_", total), "seconds": seconds}
            t.state.update(step=lead.state["step"], epoch=t.state["epoch"] + 1, seconds=t.state["seconds"] + seconds,
                           epoch_seconds=(t.state["epoch_seconds"] + [seconds - t.state.pop("startup_s", 0.0)])[-20:])
            t.replan()
            step.sync_run(k)
            t.save(row)
            if on_epoch_end is not None:
                on_epoch_end(t, row)
        step.report_epoch(row, bar)
    if bar is not None:
        bar.close()
    return row


def initial_potential(cfg: TrainConfig, species) -> SAKEPotential:
    """Fine-tuning (``cfg.init``): the checkpoint's potential, weights and energy normalisation, to train further.
    Its model settings must be the run's, and it must know every element of the data."""
    potential = load_checkpoint(cfg.init).train()
    if potential.config != cfg.model:
        raise SakeMDError(f"--init {cfg.init}: its model ({potential.config.to_dict()}) is not the run's "
                          f"({cfg.model.to_dict()}); leave out the model options to use the checkpoint's")
    if unknown := sorted(set(species) - set(potential.atomic_numbers)):
        raise DataError(f"--init {cfg.init} knows the elements {potential.atomic_numbers} only; {cfg.data} "
                        f"also holds {unknown}: train a new model for them")
    return potential


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def load_split(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """Read and validate the training file, then split off ``n_valid`` frames with ``seed``."""
    data = cfg.source(cfg.data).read()
    if len(data) < 2:
        raise DataError(f"{cfg.data}: need at least 2 frames to train and validate, found {len(data)}")
    return split(data, cfg.n_valid, cfg.seed, cfg.valid_pool)


def resolve_training_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """The run's device (its process's GPU ``local_rank`` on CUDA), once torch has the run's ``threads``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def run_config(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """The settings of the run into ``cfg.out``: resuming, its config.json; else ``cfg``, never over another run."""
    out = Path(cfg.out)
    if resume:
        return read_config(out)
    if (out / "last.pt").exists():
        raise SakeMDError(f"{out} already holds a training run (last.pt); use --resume to continue it "
                          f"or choose another --out")
    return cfg


def open_run(trainer: Trainer, resume: bool) -> None:
    """Run folder: config.json (the exact settings), then, resuming, last.pt's state, else an empty metrics.jsonl."""
    if trainer.ctx.main:
        trainer.out.mkdir(parents=True, exist_ok=True)
        (trainer.out / "config.json").write_text(json.dumps(trainer.cfg.to_dict(), indent=2) + "\n")
        if not resume:
            (trainer.out / "metrics.jsonl").write_text("")
    if resume:
        trainer.restore()
    trainer.choose_step()


def train(cfg: TrainConfig, resume: bool = False, on_epoch_end=None) -> Path:
    """Run (or resume) training into ``cfg.out``. Returns the path of best.pt."""
    cfg = run_config(cfg, resume)
    out = Path(cfg.out)
    device = resolve_training_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = distributed.setup(device)
    trainer = None
    try:
        trainer = Trainer(cfg, ctx, device)
        open_run(trainer, resume)
        if resume and trainer.finished() and (out / "best.pt").exists() and finalized(cfg, out / "best.pt"):
            if ctx.main:
                print(f"nothing to do: the run in {out} finished after {trainer.state['epoch']} epochs "
                      f"(best.pt: epoch {trainer.state['best_epoch']})", flush=True)
            return out / "best.pt"
        if ctx.main and not resume:
            length = (f"a time budget of {_duration(cfg.time_budget)} (the epochs that fit)" if cfg.timed
                      else f"{cfg.epochs} epochs")
            print(f"training {cfg.model.variant} ({count_parameters(trainer.potential)} parameters) on "
                  f"{len(trainer.train_set)} frames, validating on {len(trainer.valid_set)}, "
                  f"{ctx.world} process(es), {device}, {cfg.dtype}; recipe {cfg.recipe}: {length}", flush=True)
        trainer.fit(on_epoch_end)
        distributed.barrier(ctx)
        if ctx.main and (report := finalize(cfg, out, trainer.train_set)) is not None:
            print(f"test errors of best.pt (epoch {trainer.state['best_epoch']}):\n{format_report(report)}", flush=True)
        distributed.barrier(ctx)  # every process leaves the group together, after rank 0's final writes
    finally:
        # DDP's reducer keeps the process group (and gloo's threads) alive: free it now, not in the
        # interpreter's teardown at exit, where a late gloo thread can abort the process
        del trainer
        if ctx.active:
            gc.collect()
        distributed.teardown(ctx)
    return out / "best.pt"


def finalize(cfg: TrainConfig, out: Path, train_set: Dataset) -> dict | None:
    """The end of a run, on best.pt read once and written once: re-centre its energy shift on the training split
    (``cfg.refit_shift``), attach the test errors (``cfg.test``). Returns the test report (None without a test file).

    An MAE force loss leaves the constant energy offset to the small energy term, so it wanders during training; the
    median error over the training frames (``energy_offset``) removes that offset."""
    if not (cfg.refit_shift or cfg.test):
        return None
    potential, data = load_checkpoint(out / "best.pt", with_metadata=True)
    training, metrics, report = dict(data.get("training") or {}), dict(data.get("metrics") or {}), None
    if cfg.refit_shift:
        offset = energy_offset(potential.to(resolve_device(cfg.device)), train_set)
        potential = potential.cpu()
        potential.energy_shift += offset
        training["energy_shift_refit_eV"] = training.get("energy_shift_refit_eV", 0.0) + offset
    if cfg.test:
        metrics["test"] = report = evaluate(out / "best.pt", cfg.source(cfg.test), device=cfg.device,
                                            loaded=(potential, {**data, "training": training}))
    save_checkpoint(out / "best.pt", potential, training, metrics, data.get("extra"))
    return report


def finalized(cfg: TrainConfig, best: Path) -> bool:
    """Whether ``finalize`` has run on ``best`` (a run killed between its last epoch and the end has not)."""
    data = read_checkpoint(best)
    return ((not cfg.refit_shift or "energy_shift_refit_eV" in (data.get("training") or {}))
            and (not cfg.test or "test" in (data.get("metrics") or {})))


def read_config(out: Path) -> TrainConfig:
    path = out / "config.json"
    if not path.exists():
        raise SakeMDError(f"cannot resume: {path} not found (was the run started with this --out?)")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def energy_offset(potential: SAKEPotential, data: Dataset, batch_size: int = 64) -> float:
    """Median of E_ref − E_pred over ``data`` in eV (float64), energies only. The median, not the mean: a few frames
    far out of range that the model cannot fit (the data loop adds such frames) would pull a mean by their
    errors of eV, and shift every other prediction with it (measured: +10 meV on a whole test set)."""
    energy, _ = predict(potential, data, batch_size, forces=False)
    return float(np.median(data.energy - energy))
