"""Size a study from measured speed: a few training steps and MD steps of every variant on every molecule,
in this process on one thread, scaled to the study's epochs and MD lengths.

Training per epoch = (CPU s per training sample) × training frames + one validation pass; MD per model =
steps of the longest horizon / (steps/s of all runs together). The epochs that fit ``target_minutes``
for the slowest variant of a molecule are the suggestion for its ``epochs``.
"""

import math
import time
from dataclasses import dataclass

import torch

from ..devices import resolve_device
from ..distributed import Context
from ..md.reference import read_reference
from ..md.replicas import simulate
from ..md.stability import PRESETS, protocol_setup
from ..train import Trainer
from .definition import Run, Study


@dataclass
class Speed:
    molecule: str
    variant: str
    epoch_cpu_s: float
    md_steps_per_cpu_s: float  # steps of all runs of one model together


def measure(study: Study, run: Run, device: str = "cpu") -> Speed:
    """CPU seconds of one epoch and MD steps per CPU second of ``run``'s variant (untrained weights: the
    cost of the dense model does not depend on the values)."""
    torch.set_num_threads(1)
    steps, md_steps = study.sizing["steps"], study.sizing["md_steps"]
    cfg = study.train_config(run, device)
    trainer = Trainer(cfg, Context(), resolve_device(device))
    trainer.choose_step()  # the step the training will take
    n_train, batch = len(trainer.train_set), cfg.batch_size
    full = trainer.train_set
    trainer.train_set = full.subset(range(min(n_train, batch)))
    trainer.train_epoch()  # warm-up
    trainer.train_set = full.subset(range(min(n_train, steps * batch)))
    t0 = time.process_time()
    trainer.train_epoch()
    per_sample = (time.process_time() - t0) / len(trainer.train_set)
    t0 = time.process_time()
    trainer.validate()
    epoch = per_sample * n_train + time.process_time() - t0
    reference = read_reference(study.data_file(run.molecule, "train"))
    start = read_reference(study.data_file(run.molecule, "test"))
    preset = PRESETS[study.md["preset"]]
    _, model, state, integrator, _ = protocol_setup(trainer.potential, reference, start, preset, study.md["runs"],
                                                    study.md["seed"], resolve_device(device))
    simulate(state, integrator, model, 2)  # warm-up
    t0 = time.process_time()
    simulate(state, integrator, model, md_steps)
    return Speed(run.molecule, run.variant, epoch, md_steps / (time.process_time() - t0))


def sizing_table(study: Study, speeds: list[Speed]) -> str:
    """The measured speeds, suggested epochs per molecule and the CPU-hours of the selected runs."""
    target = 60.0 * study.sizing["target_minutes"]
    lines = [f"{'molecule':14s} {'variant':16s} {'s/epoch':>8s} {'MD steps/s':>10s} {'epochs':>6s} "
             f"{'train h/model':>13s} {'MD h/model':>10s} {'models':>6s}"]
    total = 0.0
    suggestions = {}
    for s in speeds:
        m = study.molecules[s.molecule]
        slowest = max(x.epoch_cpu_s for x in speeds if x.molecule == s.molecule)
        if s.variant in m.budget_epochs:  # the epochs the budget bought on the reference machine, at this speed
            epochs = m.budget_epochs[s.variant]
            train_h = epochs * s.epoch_cpu_s / 3600
        elif m.time_budget_s is None:
            suggestions[s.molecule] = max(1, math.floor(target / slowest))
            epochs, train_h = m.epochs, m.epochs * s.epoch_cpu_s / 3600
        else:  # a time budget: the epochs that fit it, at the measured speed
            epochs, train_h = math.floor(m.time_budget_s / s.epoch_cpu_s), m.time_budget_s / 3600
        md_h = sum(_md_hours(study, s, seed) for seed in m.seeds) / len(m.seeds)
        total += len(m.seeds) * (train_h + md_h)
        lines.append(f"{s.molecule:14s} {s.variant:16s} {s.epoch_cpu_s:8.1f} {s.md_steps_per_cpu_s:10.1f} "
                     f"{epochs:6d} {train_h:13.2f} {md_h:10.2f} {len(m.seeds):6d}")
    lines.append(f"total: {total:.1f} CPU-hours for these variants and molecules with the epochs above "
                 f"(one thread per job; wall time ≈ total / jobs; the committee analyses add minutes)")
    for molecule, epochs in suggestions.items():
        lines.append(f"suggested epochs for {molecule}: {epochs} (slowest variant in {target / 60:g} min of one "
                     f"core; the study file says {study.molecules[molecule].epochs})")
    return "\n".join(lines)


def _md_hours(study: Study, s: Speed, seed: int) -> float:
    horizon = study.md_horizons(Run(s.molecule, s.variant, seed))[-1]
    return PRESETS[study.md["preset"]].steps(horizon) / s.md_steps_per_cpu_s / 3600
