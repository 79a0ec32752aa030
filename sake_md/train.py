"""Training: the paper's MD17 recipe as a preset, and a time-budgeted recipe for CPUs.

Loss per batch, in kcal/mol units on de-standardised predictions (``loss``):
    mae:   force_weight · MAE(F) + energy_weight · MAE(E)          (the paper's)
    mse:   force_weight · MSE(F) + energy_weight · MSE(E)
    huber: the same with Huber(δ = huber_delta) in place of the squares
E is the total energy, or the energy per atom with ``energy_per_atom``. In the final ``stage_fraction``
of the run the energy weight becomes ``stage_energy_weight`` (a short energy stage, as MACE's).
Optimiser chain (the paper's): g += weight_decay · θ (coupled L2); g = clip(g, -clip, clip) elementwise;
Adam(β1, β2, ε), or AMSGrad with ``amsgrad``. Learning rate per step, as a function of the progress
p ∈ [0, 1] of the planned run: linear warm-up lr_start → lr over p < warmup_fraction, cosine decay to 0 at
p = decay_end, then 0. With ``ema_decay`` an exponential moving average of the weights is validated,
saved as best.pt and kept in last.pt, so that a resumed run continues it exactly.

With a time budget the number of epochs is estimated after the first few steps and re-measured after
every epoch (epochs that fit = done + remaining time / recent epoch time); the schedule is laid over it.

Output folder: config.json (the exact settings), metrics.jsonl (one line per epoch), last.pt and best.pt
(best on validation force MAE), written atomically after every epoch. ``resume=True`` continues from
last.pt with the same optimiser state, schedule and frame order: a killed run loses at most one epoch.
"""

import contextlib
import dataclasses
import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .allocator import keep_freed_memory
from .checkpoint import potential_from_dict, read_checkpoint, save_checkpoint
from .data import Dataset, LabelledBatch, labelled_batch, read_dataset, shuffled_order, split
from .errors import DataError, SakeMDError
from .model import ModelConfig, SAKEPotential, count_parameters
from .predict import ErrorSums, predict, predict_batches
from .units import KCAL_PER_MOL

RECIPES = {
    "paper": {"batch_size": 4, "epochs": 5000, "time_budget": None},
    # Measured lever by lever on rMD17 (docs/recipe.md): small batches, the MAE loss with a per-atom energy
    # term of equal weight, an EMA of the weights, and a cosine laid over the whole budget.
    "budget": {"batch_size": 4, "epochs": None, "time_budget": 1800.0, "lr": 1e-3, "warmup_fraction": 0.05,
               "decay_end": 1.0, "loss": "mae", "energy_per_atom": True, "energy_weight": 1.0, "ema_decay": 0.99,
               "compile": True},
}
LOSSES = ("mae", "mse", "huber")


def describe_recipe(name: str) -> str:
    """A recipe's settings that differ from TrainConfig's defaults, as 'key value' text."""
    return ", ".join(f"{k.replace('_', ' ')} {'-' if v is None else v}" for k, v in RECIPES[name].items())


@dataclass
class TrainConfig:
    """Every setting of a run; ``config.json`` in the output folder holds exactly this."""

    data: str
    out: str
    recipe: str = "paper"
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())
    test: str | None = None
    n_valid: int = 50
    seed: int = 0
    epochs: int | None = 5000
    time_budget: float | None = None  # seconds
    batch_size: int = 4
    lr: float = 1e-3
    lr_start: float = 1e-6
    warmup_fraction: float = 0.1
    decay_end: float = 0.9
    weight_decay: float = 1e-5
    clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    energy_weight: float = 0.001
    force_weight: float = 1.0
    loss: str = "mae"
    huber_delta: float = 0.5  # kcal/mol(/Å)
    energy_per_atom: bool = False
    stage_fraction: float = 0.0
    stage_energy_weight: float | None = None
    amsgrad: bool = False
    ema_decay: float | None = None
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    energy_unit: str | None = None
    length_unit: str | None = None
    refit_shift: bool = True  # at the end, re-centre best.pt's energy shift on the training split
    progress: bool = True
    compile: bool = False  # the training step as one compiled graph (sake_md.compile_train)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise SakeMDError(f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
        if (self.epochs is None) == (self.time_budget is None):
            raise SakeMDError("give exactly one of epochs and time_budget")
        if self.batch_size < 1 or (self.epochs is not None and self.epochs < 1):
            raise SakeMDError("batch_size and epochs must be positive")
        if not 0 <= self.warmup_fraction <= self.decay_end <= 1:
            raise SakeMDError("need 0 <= warmup_fraction <= decay_end <= 1")
        if self.loss not in LOSSES:
            raise SakeMDError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if not 0 <= self.stage_fraction < 1:
            raise SakeMDError("stage_fraction must be in [0, 1)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise SakeMDError("ema_decay must be in (0, 1)")
        if self.dtype not in ("float32", "float64"):
            raise SakeMDError(f"dtype must be float32 or float64, got {self.dtype!r}")
        ModelConfig(**self.model)  # validates the variant
        self.betas = tuple(self.betas)

    @classmethod
    def preset(cls, recipe: str, data: str, out: str, **overrides) -> "TrainConfig":
        """A recipe's defaults, then ``overrides`` (None values are ignored)."""
        if recipe not in RECIPES:
            raise SakeMDError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        settings = dict(RECIPES[recipe])
        given = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in given:
            settings["time_budget"] = None
        if "time_budget" in given:
            settings["epochs"] = None
        settings.update(given)
        return cls(data=data, out=out, recipe=recipe, **settings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def learning_rate(progress: float, cfg: TrainConfig) -> float:
    """Warm-up, cosine decay, then zero. ``progress`` ∈ [0, 1] of the planned run."""
    p = min(max(progress, 0.0), 1.0)
    if p < cfg.warmup_fraction:
        return cfg.lr_start + (cfg.lr - cfg.lr_start) * p / cfg.warmup_fraction
    if p < cfg.decay_end:
        t = (p - cfg.warmup_fraction) / (cfg.decay_end - cfg.warmup_fraction)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return 0.0


class PaperAdam(torch.optim.Adam):
    """Adam (or AMSGrad) after the paper's gradient transforms: g += λθ (coupled L2), then elementwise clip."""

    def __init__(self, params, lr: float, betas, eps: float, weight_decay: float, clip: float,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, amsgrad=amsgrad)
        self.coupled_decay, self.clip = weight_decay, clip

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:  # a few foreach kernels, not three per parameter
            params = group["params"]
            grads = torch._foreach_mul(params, self.coupled_decay)
            torch._foreach_add_(grads, [torch.zeros_like(p) if p.grad is None else p.grad for p in params])
            torch._foreach_clamp_min_(grads, -self.clip)
            torch._foreach_clamp_max_(grads, self.clip)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        return super().step(closure)


class EnergyAndForces(nn.Module):
    """The potential's energy and forces, with the autograd graph kept for the loss; the unit that
    DistributedDataParallel wraps: (species, positions, mask) -> (energy_model, forces)."""

    def __init__(self, potential: SAKEPotential):
        super().__init__()
        self.potential = potential

    def forward(self, species, positions, mask, cell=None, pbc=None):
        """Shape: (B, N), (B, N, 3), (B, N) [, (B, 3, 3), (B, 3)] -> (B,), (B, N, 3), both with graph."""
        out = self.potential.predict(species, positions, mask, forces=True, training=True, cell=cell, pbc=pbc)
        return out["energy_model"], out["forces"]


def residuals(energy_model, forces, lb: LabelledBatch, potential: SAKEPotential):
    """Prediction − reference for energies (B,) in eV and forces (B, N, 3) in eV/Å, zero at padding.

    The energy target E_ref − Σ reference terms is formed in float64, then cast to the model dtype.
    """
    b = lb.batch
    target = (lb.energy - potential.reference_energy(b.species, b.mask).sum(-1)).to(energy_model.dtype)
    df = (forces - lb.forces) * b.mask.unsqueeze(-1)
    return energy_model - target, df


def loss_from(de, df, mask, cfg: TrainConfig) -> torch.Tensor:
    """force_weight · L(F) + energy_weight · L(E) in kcal/mol and kcal/mol/Å, L = MAE, MSE or Huber.

    Shape: de (B,), df (B, N, 3) zero at padding, mask (B, N) -> scalar.
    """
    if cfg.energy_per_atom:
        de = de / mask.sum(-1).to(de.dtype)
    de, df = de / KCAL_PER_MOL, df / KCAL_PER_MOL
    n_components = 3.0 * mask.sum()
    if cfg.loss == "mae":
        f_term, e_term = df.abs().sum() / n_components, de.abs().mean()
    elif cfg.loss == "mse":
        f_term, e_term = (df * df).sum() / n_components, (de * de).mean()
    else:  # huber; padding components are exact zeros and add nothing
        f_term = F.huber_loss(df, torch.zeros_like(df), reduction="sum", delta=cfg.huber_delta) / n_components
        e_term = F.huber_loss(de, torch.zeros_like(de), delta=cfg.huber_delta)
    return cfg.force_weight * f_term + cfg.energy_weight * e_term


class WeightAverage:
    """Exponential moving average of the parameters: θ̄ ← d·θ̄ + (1 − d)·θ after every optimiser step.

    ``swapped()`` puts θ̄ into the model for validation and saving, then restores θ.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, list(self.module.parameters()), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        params = list(self.module.parameters())
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, avg in zip(params, self.shadow, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.shadow]

    def load_state_dict(self, tensors) -> None:
        for avg, t in zip(self.shadow, tensors, strict=True):
            avg.copy_(t)


class Trainer:
    """One run: data, model, optimiser, schedule, output folder. ``fit`` trains; state lives in ``self.state``."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context, device: torch.device):
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.dtype = getattr(torch, cfg.dtype)
        self.out = Path(cfg.out)
        self.train_set, self.valid_set = load_split(cfg)
        self.state = {"epoch": 0, "step": 0, "planned_epochs": cfg.epochs or 0, "seconds": 0.0,
                      "epoch_seconds": [], "best_val_force_mae_meV_A": None, "best_epoch": None}
        self.potential = self.build_potential().to(device=device, dtype=self.dtype)
        self.model = EnergyAndForces(self.potential)
        if ctx.active:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        self.optimizer = PaperAdam(self.potential.parameters(), cfg.lr_start, cfg.betas, cfg.eps, cfg.weight_decay,
                                   cfg.clip, cfg.amsgrad)
        self.average = WeightAverage(self.potential, cfg.ema_decay) if cfg.ema_decay else None
        self.step = self.eager_step
        if self.potential.cutoff is not None:
            keep_freed_memory()  # see sake_md.allocator
        if cfg.compile and self.potential.cutoff is not None:
            raise SakeMDError("--compile trains dense (molecular) models; a model with --cutoff trains eagerly")
        if cfg.compile:
            from .compile_train import CompiledTrainStep

            self.step = CompiledTrainStep.for_trainer(self)

    def build_potential(self) -> SAKEPotential:
        torch.manual_seed(self.cfg.seed)
        energies = self.train_set.energy
        scale = float(energies.std()) if len(energies) > 1 and energies.std() > 0 else 1.0
        species = sorted(set(self.train_set.species) | set(self.valid_set.species))
        return SAKEPotential(species, ModelConfig(**self.cfg.model), energy_scale=scale,
                             energy_shift=float(energies.mean()))

    # ---- schedule -------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        n, b = len(self.train_set), self.cfg.batch_size
        return n // b if self.ctx.active and n % b and n % b < self.ctx.world else math.ceil(n / b)

    def progress(self) -> float:
        planned = self.state["planned_epochs"]
        if planned <= 0:
            return 0.0
        return self.state["step"] / (planned * self.steps_per_epoch())

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
        """Budget mode: epochs that fit = epochs done + remaining time / recent epoch time."""
        if self.cfg.time_budget is None:
            return
        recent = self.state["epoch_seconds"][-5:]
        per_epoch = float(np.mean(recent)) if recent else step_seconds * self.steps_per_epoch()
        per_epoch = distributed.all_max(self.ctx, per_epoch)
        remaining = self.cfg.time_budget - self.state["seconds"]
        fit = int(max(remaining, 0.0) // max(per_epoch, 1e-9))
        self.state["planned_epochs"] = max(self.state["epoch"] + fit, self.state["epoch"] + (0 if recent else 1))

    # ---- one epoch -------------------------------------------------------------------------------
    def local_indices(self, order: np.ndarray):
        """Global batches of ``order``; each process takes its share of every global batch."""
        b, world = self.cfg.batch_size, self.ctx.world
        for start in range(0, len(order), b):
            chunk = order[start:start + b]
            if len(chunk) < world:
                continue
            yield np.array_split(chunk, world)[self.ctx.rank]

    def train_epoch(self, bar=None) -> dict:
        self.model.train()
        errors = ErrorSums()
        order = shuffled_order(len(self.train_set), self.cfg.seed, self.state["epoch"])
        species_index = self.potential.species_index
        t0 = time.perf_counter()
        for k, idx in enumerate(self.local_indices(order)):
            lb = labelled_batch(self.train_set, idx, species_index, self.dtype, self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.progress(), self.cfg)
            loss, de, df = self.step(lb, self.loss_settings())
            self.optimizer.step()
            if self.average is not None:
                self.average.update()
            self.state["step"] += 1
            errors.add_batch(de, df, lb.batch.mask)
            if k == 2 and self.state["epoch"] == 0 and self.cfg.time_budget is not None:
                self.replan(step_seconds=(time.perf_counter() - t0) / 3)
            if bar is not None:
                bar.set_postfix_str(f"loss {float(loss.detach()):.3f}", refresh=False)
        return self.summary(errors, "train")

    def eager_step(self, lb: LabelledBatch, cfg: TrainConfig):
        """Forward, forces, loss and its gradients (into p.grad) for one batch -> loss, de, df."""
        energy_model, forces = self.model(lb.batch.species, lb.batch.positions, lb.batch.mask, lb.batch.cell,
                                          lb.batch.pbc)
        de, df = residuals(energy_model, forces, lb, self.potential)
        loss = loss_from(de, df, lb.batch.mask, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, de, df

    def validate(self) -> dict:
        """Errors on this process's share of the validation frames, summed over processes."""
        self.model.eval()
        errors = ErrorSums()
        share = np.array_split(np.arange(len(self.valid_set)), self.ctx.world)[self.ctx.rank]
        for lb, out in predict_batches(self.potential, self.valid_set, max(self.cfg.batch_size, 32), order=share):
            de, df = residuals(out["energy_model"], out["forces"], lb, self.potential)
            errors.add_batch(de, df, lb.batch.mask)
        return self.summary(errors, "val")

    def summary(self, errors: ErrorSums, prefix: str) -> dict:
        """Energy and force MAE/RMSE (meV, meV/Å) over all processes, as ``{prefix}_energy_mae_meV`` etc."""
        names = ("energy_mae_meV", "energy_rmse_meV", "force_mae_meV_A", "force_rmse_meV_A")
        return errors.summary(names, f"{prefix}_", lambda sums: distributed.all_sum(self.ctx, sums))

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self, on_epoch_end=None) -> dict:
        """Train until the planned epochs are done. ``on_epoch_end(trainer, row)`` runs after each save."""
        bar = self.progress_bar()
        if self.cfg.time_budget is not None and self.state["epoch"] > 0:
            self.replan()
        row = {}
        while self.state["epoch"] < self.state["planned_epochs"] or (
                self.state["epoch"] == 0 and self.cfg.time_budget is not None):
            start = time.perf_counter()
            lr = learning_rate(self.progress(), self.cfg)
            row = {"epoch": self.state["epoch"] + 1, "lr": lr, **self.train_epoch(bar)}
            with self.evaluated_weights():
                row.update(self.validate())
            seconds = distributed.all_max(self.ctx, time.perf_counter() - start)
            self.state["epoch"] += 1
            self.state["seconds"] += seconds
            self.state["epoch_seconds"] = (self.state["epoch_seconds"] + [seconds])[-20:]
            row["seconds"] = seconds
            self.replan()
            self.save(row)
            if bar is not None:
                bar.total = self.state["planned_epochs"]
                bar.set_postfix_str(f"F {row['train_force_mae_meV_A']:.1f}/{row['val_force_mae_meV_A']:.1f} "
                                    f"E {row['train_energy_mae_meV']:.1f}/{row['val_energy_mae_meV']:.1f} "
                                    f"meV(/Å) train/val lr {lr:.1e}")
                bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(self, row)
        if bar is not None:
            bar.close()
        return row

    def progress_bar(self):
        if not (self.cfg.progress and self.ctx.main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.state["planned_epochs"] or None, initial=self.state["epoch"], unit="epoch",
                    mininterval=5.0, dynamic_ncols=True)

    # ---- output folder ---------------------------------------------------------------------------
    def save(self, row: dict) -> None:
        if not self.ctx.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        best = self.state["best_val_force_mae_meV_A"]
        is_best = best is None or row["val_force_mae_meV_A"] <= best
        if is_best:
            self.state["best_val_force_mae_meV_A"] = row["val_force_mae_meV_A"]
            self.state["best_epoch"] = self.state["epoch"]
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
        n_seen = s["step"] * cfg.batch_size
        return {"data": str(Path(cfg.data).resolve()), "test_data": cfg.test,
                "split": {"seed": cfg.seed, "train_frames": len(self.train_set), "valid_frames": len(self.valid_set)},
                "recipe": cfg.recipe, "epochs": s["epoch"], "planned_epochs": s["planned_epochs"],
                "seconds": round(s["seconds"], 1), "samples_per_s": round(n_seen / max(s["seconds"], 1e-9), 1),
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
        if self.ctx.main:
            truncate_log(self.out / "metrics.jsonl", self.state["epoch"])


def truncate_log(path: Path, epochs: int) -> None:
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r)["epoch"] <= epochs]
    path.write_text("".join(r + "\n" for r in kept))


def load_split(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """Read and validate the training file, then split off ``n_valid`` frames with ``seed``."""
    data = read_dataset(cfg.data, cfg.energy_key, cfg.forces_key, cfg.energy_unit, cfg.length_unit)
    if len(data) < 2:
        raise DataError(f"{cfg.data}: need at least 2 frames to train and validate, found {len(data)}")
    return split(data, cfg.n_valid, cfg.seed)


def resolve_training_device(name: str, ctx_local_rank: int = 0) -> torch.device:
    from .devices import resolve_device

    device = resolve_device(name)
    return torch.device("cuda", ctx_local_rank) if device.type == "cuda" else device


def train(cfg: TrainConfig, resume: bool = False, on_epoch_end=None) -> Path:
    """Run (or resume) training into ``cfg.out``. Returns the path of best.pt."""
    out = Path(cfg.out)
    if resume:
        cfg = read_config(out)
    elif (out / "last.pt").exists():
        raise SakeMDError(f"{out} already holds a training run (last.pt); use --resume to continue it "
                          f"or choose another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_training_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = distributed.setup(device)
    trainer = None
    try:
        trainer = Trainer(cfg, ctx, device)
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if resume:
            trainer.restore()
        if ctx.main and not resume:
            (out / "metrics.jsonl").write_text("")
            print(f"training {cfg.model['variant']} ({count_parameters(trainer.potential)} parameters) on "
                  f"{len(trainer.train_set)} frames, validating on {len(trainer.valid_set)}, "
                  f"{ctx.world} process(es), {device}, {cfg.dtype}", flush=True)
        trainer.fit(on_epoch_end)
        distributed.barrier(ctx)
        if ctx.main:
            finalize(cfg, out, trainer.train_set)
        distributed.barrier(ctx)  # every process leaves the group together, after rank 0's final writes
    finally:
        # DDP's reducer keeps the process group (and gloo's threads) alive: free it now, not in the
        # interpreter's teardown at exit, where a late gloo thread can abort the process
        del trainer
        if ctx.active:
            gc.collect()
        distributed.teardown(ctx)
    return out / "best.pt"


def finalize(cfg: TrainConfig, out: Path, train_set: Dataset) -> None:
    """The end of a run: re-centre best.pt's energy shift on the training split, attach the test errors."""
    if cfg.refit_shift:
        refit_energy_shift(out / "best.pt", train_set, cfg.device)
    if cfg.test:
        attach_test_metrics(out / "best.pt", cfg.test, energy_key=cfg.energy_key, forces_key=cfg.forces_key,
                            energy_unit=cfg.energy_unit, length_unit=cfg.length_unit, device=cfg.device)


def read_config(out: Path) -> TrainConfig:
    path = out / "config.json"
    if not path.exists():
        raise SakeMDError(f"cannot resume: {path} not found (was the run started with this --out?)")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def energy_offset(potential: SAKEPotential, data: Dataset, batch_size: int = 64) -> float:
    """Mean of E_ref − E_pred over ``data`` in eV (float64), energies only."""
    energy, _ = predict(potential, data, batch_size, forces=False)
    return float((data.energy - energy).sum()) / len(data)


def refit_energy_shift(checkpoint, train_set: Dataset, device: str = "cpu") -> float:
    """Add the mean training-set energy residual to the checkpoint's energy shift; returns it (eV).

    An MAE force loss leaves the constant energy offset to the small energy term, so it wanders
    during training; this least-squares constant (training frames only) removes that offset.
    """
    from .checkpoint import load_checkpoint
    from .devices import resolve_device

    potential, data = load_checkpoint(checkpoint, with_metadata=True)
    offset = energy_offset(potential.to(resolve_device(device)), train_set)
    potential = potential.cpu()
    potential.energy_shift += offset
    training = dict(data.get("training") or {})
    training["energy_shift_refit_eV"] = training.get("energy_shift_refit_eV", 0.0) + offset
    save_checkpoint(checkpoint, potential, training, data.get("metrics"), data.get("extra"))
    return offset


def attach_test_metrics(checkpoint, test, device: str = "cpu", **read_options) -> dict:
    """Evaluate ``checkpoint`` on the file ``test`` (on ``device``) and store the report under ``metrics["test"]``."""
    from .checkpoint import load_checkpoint
    from .evaluate import evaluate

    report = evaluate(checkpoint, test, device=device, **read_options)
    potential, data = load_checkpoint(checkpoint, with_metadata=True)
    metrics = dict(data.get("metrics") or {})
    metrics["test"] = report
    save_checkpoint(checkpoint, potential, data.get("training"), metrics, data.get("extra"))
    return report
