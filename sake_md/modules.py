"""Small parametrised building blocks: Flax-style initialised linear maps, MLPs, the radial basis."""

import math

import torch
from torch import nn


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's default kernel init: truncated normal (±2σ) with variance 1/fan_in."""
    fan_in = weight.shape[1]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # corrects for the truncation
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` initialised as the reference does (LeCun-normal weights, zero bias)."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    lecun_normal_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def mlp(n_in: int, n_hidden: int, n_out: int, last_activation: bool, bias_out: bool = True) -> nn.Sequential:
    """Linear -> SiLU -> Linear [-> SiLU]."""
    layers = [linear(n_in, n_hidden), nn.SiLU(), linear(n_hidden, n_out, bias=bias_out)]
    if last_activation:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ExpNormalRBF(nn.Module):
    """PhysNet's exponential-normal radial basis with trainable centres and widths.

    RBF_k(d) = exp(-β_k (exp(-α d) - μ_k)²), α = 5 / d_up.
    """

    def __init__(self, n: int = 50, d_up: float = 5.0):
        super().__init__()
        self.alpha = 5.0 / d_up
        start = math.exp(-5.0)
        self.means = nn.Parameter(torch.linspace(start, 1.0, n, dtype=torch.float64).to(torch.get_default_dtype()))
        self.betas = nn.Parameter(torch.full((n,), (2.0 / n * (1.0 - start)) ** -2))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Shape: (...) -> (..., n)."""
        arg = -self.betas * (torch.exp(-self.alpha * d).unsqueeze(-1) - self.means) ** 2
        # Half of the exponents are below -100 for a molecule, and exp() of those is 100-300x slower
        # on x86 (float32 underflow through denormals). exp(-80) ≈ 2e-35, so those entries are set to
        # exactly 0 instead: exact zeros also keep denormals out of the products downstream.
        small = arg < -80.0
        return torch.exp(arg.masked_fill(small, 0.0)).masked_fill(small, 0.0)
