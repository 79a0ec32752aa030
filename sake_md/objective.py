"""The training objective every loop (``train``, ``compile_train``, ``stacked``) shares; the loops import it, it imports
no loop: the settings (``TrainConfig``, the recipes), the energy target and residuals, the loss, the learning rate
(``learning_rate``), the paper's optimiser chain (``PaperAdam``) and the weight average (``WeightAverage``).

Loss per batch (``loss``), in kcal/mol units on de-standardised predictions: force_weight · L(F) + energy_weight · L(E),
L = MAE (the paper's), MSE or Huber(δ = huber_delta). E is the total energy, or the energy per atom with
``energy_per_atom``. In the final ``stage_fraction`` of the run the energy weight becomes ``stage_energy_weight`` (a
short energy stage, as MACE's). With ``ema_decay`` an exponential moving average of the weights is validated."""

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataSource, LabelledBatch
from .errors import SakeMDError
from .model import ModelConfig, SAKEPotential
from .units import KCAL_PER_MOL

__all__ = ["RECIPES", "RECIPE_ALIASES", "DEFAULT_RECIPE", "LOSSES", "TrainConfig", "describe_recipe", "learning_rate",
           "PaperAdam", "EnergyAndForces", "energy_target", "residuals", "loss_from", "WeightAverage"]

RECIPES = {
    "paper": {"batch_size": 4, "epochs": 5000, "time_budget": None},
    # Measured lever by lever on rMD17: docs/recipe.md gives each setting's measured effect and the final choice.
    "cpu": {"batch_size": 4, "epochs": None, "time_budget": 1800.0, "lr": 1e-3, "warmup_fraction": 0.05,
            "decay_end": 1.0, "loss": "mae", "energy_per_atom": True, "energy_weight": 1.0, "ema_decay": 0.99,
            "compile": "auto"},
}
RECIPE_ALIASES = {"budget": "cpu"}  # the CPU recipe's first name: config.json files and studies that say it still load
DEFAULT_RECIPE = "cpu"  # the command line's: a run a user can wait for; the paper's 5,000 epochs on request
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
    model: ModelConfig = field(default_factory=ModelConfig)  # config.json: ModelConfig.to_dict(); a dict is read
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
    valid_pool: int | None = None  # validation frames from the first N frames of the file only (data.split)
    refit_shift: bool = True  # at the end, re-centre best.pt's energy shift on the training split
    energy_scale: float | None = None  # eV, the model's output scale; None: the std of the training energies
    init: str | None = None  # fine-tuning: start from this checkpoint's weights and energy normalisation
    select: str = "best"  # best.pt holds the epoch of lowest validation force MAE ("best") or the last ("last")
    progress: bool = True
    compile: bool | str = False  # the training step as one compiled graph (sake_md.compile_train); "auto": where
    # it is supported and its expected compile time pays off over the run (the inference rule, sake_md.compile)

    def __post_init__(self):
        self.recipe = RECIPE_ALIASES.get(self.recipe, self.recipe)
        for bad, message in (  # the first that applies is raised
            (self.recipe not in RECIPES, f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}"),
            ((self.epochs is None) == (self.time_budget is None), "give exactly one of epochs and time_budget"),
            (self.batch_size < 1 or (self.epochs is not None and self.epochs < 1),
             "batch_size and epochs must be positive"),
            (not 0 <= self.warmup_fraction <= self.decay_end <= 1, "need 0 <= warmup_fraction <= decay_end <= 1"),
            (self.loss not in LOSSES, f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}"),
            (not 0 <= self.stage_fraction < 1, "stage_fraction must be in [0, 1)"),
            (self.ema_decay is not None and not 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)"),
            (self.compile not in (True, False, "auto"), f"compile must be true, false or 'auto', got {self.compile!r}"),
            (self.dtype not in ("float32", "float64"), f"dtype must be float32 or float64, got {self.dtype!r}"),
            (self.select not in ("best", "last"), f"select must be 'best' or 'last', got {self.select!r}"),
        ):
            if bad:
                raise SakeMDError(message)
        if isinstance(self.model, dict):  # config.json, the command line, a study
            self.model = ModelConfig(**self.model)
        self.betas = tuple(self.betas)

    @classmethod
    def preset(cls, recipe: str, data: str, out: str, **overrides) -> "TrainConfig":
        """A recipe's defaults, then ``overrides`` (None values are ignored)."""
        settings = dict(RECIPES.get(RECIPE_ALIASES.get(recipe, recipe), {}))  # unknown: refused by __post_init__
        given = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in given or "time_budget" in given:  # a length given replaces the recipe's, budget or epochs
            settings.update(epochs=None, time_budget=None)
        settings.update(given)
        return cls(data=data, out=out, recipe=recipe, **settings)

    @property
    def timed(self) -> bool:
        """Whether the run's length is a wall-clock budget rather than fixed epochs, whatever the recipe."""
        return self.time_budget is not None

    def source(self, path: str) -> DataSource:
        """``path`` read with this run's keys and units (its training and test files)."""
        return DataSource(path, self.energy_key, self.forces_key, self.energy_unit, self.length_unit)

    def to_dict(self) -> dict:
        return {**asdict(self), "betas": list(self.betas), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def learning_rate(progress: float, cfg: TrainConfig) -> float:
    """Warm-up lr_start → lr for p < warmup_fraction, cosine to 0 at decay_end, then 0 (p: ``progress`` ∈ [0, 1])."""
    p = min(max(progress, 0.0), 1.0)
    if p < cfg.warmup_fraction:
        return cfg.lr_start + (cfg.lr - cfg.lr_start) * p / cfg.warmup_fraction
    if p < cfg.decay_end:
        t = (p - cfg.warmup_fraction) / (cfg.decay_end - cfg.warmup_fraction)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return 0.0


class PaperAdam(torch.optim.Adam):
    """Adam, or AMSGrad with ``amsgrad``, after the paper's g += weight_decay · θ (coupled L2), g = clip(g, ±clip)."""

    def __init__(self, params, lr: float, betas, eps: float, weight_decay: float, clip: float, amsgrad: bool = False):
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
    """The potential's energy and forces with the graph kept for the loss; the unit DistributedDataParallel wraps."""

    def __init__(self, potential: SAKEPotential):
        super().__init__()
        self.potential = potential

    def forward(self, species, positions, mask, cell=None, pbc=None):
        """Shape: (B, N), (B, N, 3), (B, N) [, (B, 3, 3), (B, 3)] -> (B,), (B, N, 3), both with graph."""
        out = self.potential.predict(species, positions, mask, forces=True, training=True, cell=cell, pbc=pbc)
        return out["energy_model"], out["forces"]


def energy_target(lb: LabelledBatch, potential: SAKEPotential, dtype: torch.dtype) -> torch.Tensor:
    """What the model's energy learns: E_ref − Σ reference terms (B,) eV, formed in float64, cast to ``dtype``."""
    return (lb.energy - potential.reference_energy(lb.batch.species, lb.batch.mask).sum(-1)).to(dtype)


def residuals(energy_model, forces, lb: LabelledBatch, potential: SAKEPotential):
    """Prediction − reference for energies (B,) in eV and forces (B, N, 3) in eV/Å, zero at padding."""
    df = (forces - lb.forces) * lb.batch.mask.unsqueeze(-1)
    return energy_model - energy_target(lb, potential, energy_model.dtype), df


def loss_from(de, df, mask, cfg: TrainConfig) -> torch.Tensor:
    """force_weight · L(F) + energy_weight · L(E) in kcal/mol and kcal/mol/Å, L = MAE, MSE or Huber.
    Shape: de (B,), df (B, N, 3) zero at padding, mask (B, N) -> scalar."""
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
    """Exponential moving average of the parameters: θ̄ ← d·θ̄ + (1 − d)·θ after every optimiser step;
    ``swapped()`` puts θ̄ into the model for validation and saving, then restores θ."""

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
