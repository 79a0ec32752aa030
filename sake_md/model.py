"""The SAKE energy model: species embedding, a stack of SAKE layers, a per-atom readout, and
the energy normalisation. Forces come from ``compute_forces``, the one place that calls autograd."""

import inspect
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .layer import Graph, SAKELayer
from .modules import linear, mlp
from .spatial import SPATIAL_BLOCKS


@dataclass
class ModelConfig:
    """Hyperparameters; the defaults are the paper's MD17 configuration."""

    variant: str = "sake"
    hidden: int = 64
    heads: int = 4
    layers: int = 6
    radial: int = 50
    d_up: float = 5.0
    options: dict = field(default_factory=dict)  # variant-specific, e.g. {"lmax": 3}

    def __post_init__(self):
        if self.variant not in SPATIAL_BLOCKS:
            raise ConfigError(f"unknown variant {self.variant!r}; known: {', '.join(SPATIAL_BLOCKS)}")
        known = [n for n in inspect.signature(SPATIAL_BLOCKS[self.variant]).parameters
                 if n not in ("hidden", "coefficients")]
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ConfigError(f"variant {self.variant!r} has no option(s) {', '.join(unknown)}; "
                              f"its options: {', '.join(known) or 'none'}")

    def to_dict(self) -> dict:
        return asdict(self)


class SAKE(nn.Module):
    """The backbone: species indices and positions -> raw per-atom outputs y_i."""

    def __init__(self, n_species: int, config: ModelConfig):
        super().__init__()
        c = config
        block = SPATIAL_BLOCKS[c.variant]
        self.embedding_in = linear(n_species, c.hidden)
        self.layers = nn.ModuleList(
            SAKELayer(c.hidden, c.heads, block(c.hidden, c.hidden * c.heads, **c.options), c.radial, c.d_up,
                      velocity_input=i > 0)
            for i in range(c.layers)
        )
        self.embedding_out = mlp(c.hidden, c.hidden, 1, last_activation=False)

    def forward(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shape: species (B, N), positions (B, N, 3), mask (B, N) -> y (B, N), zero at padding."""
        # h⁰ = W_e onehot(z) + b_e, as a row lookup instead of a product with a one-hot
        h = F.embedding(species, self.embedding_in.weight.t()) + self.embedding_in.bias
        graph = Graph.from_mask(mask, positions.dtype)
        x, v = positions, None
        for layer in self.layers:
            h, x, v = layer(h, x, v, graph)
        return self.embedding_out(h).squeeze(-1) * mask


class SAKEPotential(nn.Module):
    """A SAKE backbone with the species it knows and its energy normalisation.

    E = scale · Σ_i y_i + shift + Σ_i e_ref(z_i). ``forward`` returns the first, model-dtype term per
    atom; ``reference_energy`` the constant terms in float64, which keeps float32 models precise for
    total energies of thousands of eV.
    """

    def __init__(self, atomic_numbers, config: ModelConfig | None = None, energy_scale: float = 1.0,
                 energy_shift: float = 0.0, atomic_energies=None):
        super().__init__()
        self.config = config or ModelConfig()
        numbers = [int(z) for z in atomic_numbers]
        if sorted(set(numbers)) != numbers or not numbers:
            raise ValueError(f"atomic_numbers must be sorted, unique and non-empty, got {numbers}")
        self.atomic_numbers = numbers
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("species_index", index, persistent=False)
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)
        refs = [0.0] * len(numbers) if atomic_energies is None else [float(e) for e in atomic_energies]
        self.atomic_energies = refs
        self.register_buffer("_refs", torch.tensor(refs, dtype=torch.float64), persistent=False)
        self.backbone = SAKE(len(numbers), self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding_in.weight.dtype

    def forward(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scaled per-atom energies without the constant terms. Shape: (B, N), (B, N, 3), (B, N) -> (B, N)."""
        return self.energy_scale * self.backbone(species, positions, mask)

    def reference_energy(self, species: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-atom constant terms (shift/N + e_ref(z)) in float64. Shape: (B, N) -> (B, N)."""
        n = mask.sum(-1, keepdim=True).to(torch.float64)
        return (self._refs.to(species.device)[species] + self.energy_shift / n) * mask

    def predict(self, species, positions, mask, forces: bool = True, training: bool = False) -> dict:
        """Energies (B,), per-atom energies (B, N) in float64 and forces (B, N, 3) in the model dtype.

        ``training=True`` keeps the graph so that a loss on forces can be differentiated.
        """
        if forces and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)  # leave the caller's tensor as it is
        with torch.set_grad_enabled(forces or training):
            atomic = self(species, positions, mask)
        energy = atomic.sum(-1)
        out = {}
        if forces:
            out["forces"] = compute_forces(energy, positions, training)
        ref = self.reference_energy(species, mask)
        out["energies"] = (atomic if training else atomic.detach()).to(torch.float64) + ref
        out["energy"] = out["energies"].sum(-1)
        out["energy_model"] = energy if training else energy.detach()
        return out


def compute_forces(energy: torch.Tensor, positions: torch.Tensor, training: bool = False) -> torch.Tensor:
    """F = -∂E/∂x. Shape: energy (B,), positions (B, N, 3) -> (B, N, 3)."""
    (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=training, retain_graph=training)
    return -grad


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
