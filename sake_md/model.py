"""The SAKE energy model: species embedding, a stack of SAKE layers, a per-atom readout, and
the energy normalisation. Forces (and stress) come from ``gradients``, the one place that calls autograd.

Two modes of the same model and parameters (``ModelConfig.cutoff``): dense, every pair of a molecule
(the paper's); sparse, the neighbours within a cutoff from a neighbour list, for periodic and large
systems (``sake_md.graph`` has the maths, ``sake_md.neighbours`` the lists).
"""

import copy
import inspect
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, InputError
from .graph import NeighbourGraph, NeighbourTable, PairMasks
from .layer import SAKELayer
from .modules import linear, mlp
from .spatial import SPATIAL_BLOCKS

__all__ = ["ModelConfig", "SAKE", "SAKEPotential", "gradients", "compute_forces", "apply_strain", "count_parameters"]


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
    cutoff: float | None = None  # Å; None: dense (all pairs), else sparse (neighbours within the cutoff)
    cutoff_width: float = 1.0  # Å; the envelope falls from 1 to 0 over [cutoff − width, cutoff]

    def __post_init__(self):
        if self.cutoff is not None:
            self.cutoff, self.cutoff_width = float(self.cutoff), float(self.cutoff_width)
            if not 0 < self.cutoff_width <= self.cutoff:
                raise ConfigError(f"the cutoff must be positive and at least the envelope width "
                                  f"({self.cutoff_width} Å), got cutoff {self.cutoff} Å")
        if self.variant not in SPATIAL_BLOCKS:
            raise ConfigError(f"unknown variant {self.variant!r}; known: {', '.join(SPATIAL_BLOCKS)}")
        known = [n for n in inspect.signature(SPATIAL_BLOCKS[self.variant]).parameters
                 if n not in ("hidden", "coefficients")]
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ConfigError(f"variant {self.variant!r} has no option(s) {', '.join(unknown)}; "
                              f"its options: {', '.join(known) or 'none'}")

    @property
    def mode(self) -> str:
        return "dense" if self.cutoff is None else "sparse"

    def to_dict(self) -> dict:
        """Dense configurations leave the cutoff keys out: their checkpoints stay readable by older sake_md."""
        d = asdict(self)
        if self.cutoff is None:
            del d["cutoff"], d["cutoff_width"]
        return d


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

    def forward(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                graph: PairMasks | NeighbourGraph | None = None) -> torch.Tensor:
        """Shape: species (B, N), positions (B, N, 3), mask (B, N) -> y (B, N), zero at padding.

        ``graph`` defaults to all pairs of each molecule (dense mode).
        """
        # h⁰ = W_e onehot(z) + b_e, as a row lookup instead of a product with a one-hot
        h = F.embedding(species, self.embedding_in.weight.t()) + self.embedding_in.bias
        graph = PairMasks.from_mask(mask, positions.dtype) if graph is None else graph
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
            raise ConfigError(f"atomic_numbers must be sorted, unique and non-empty, got {numbers}")
        self.atomic_numbers = numbers
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("species_index", index, persistent=False)
        # The normalisation as float64 buffers, not Python floats: a compiled graph takes them as inputs instead of
        # baking them in as literals, so every model of one architecture and shape compiles to the same graph and
        # torch's cache serves the next model's compile. Not in the state dict (the checkpoint stores them apart).
        self.register_buffer("_scale", torch.tensor(float(energy_scale), dtype=torch.float64), persistent=False)
        self.register_buffer("_shift", torch.tensor(float(energy_shift), dtype=torch.float64), persistent=False)
        refs = [0.0] * len(numbers) if atomic_energies is None else [float(e) for e in atomic_energies]
        self.atomic_energies = refs
        self.register_buffer("_refs", torch.tensor(refs, dtype=torch.float64), persistent=False)
        self.backbone = SAKE(len(numbers), self.config)

    FLOAT64_BUFFERS = ("_scale", "_shift", "_refs")

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.float()``, ``.cuda()``...: the energy constants follow the device but stay float64 (exact
        total energies of thousands of eV in a float32 model)."""
        kept = {k: self._buffers.pop(k) for k in self.FLOAT64_BUFFERS}
        try:
            super()._apply(fn, recurse)
        finally:
            for k, t in kept.items():
                self._buffers[k] = t.to(fn(t).device)
        return self

    @property
    def energy_scale(self) -> float:
        """eV: the model's per-atom outputs are multiplied by it."""
        return float(self._scale)

    @energy_scale.setter
    def energy_scale(self, value: float):
        self._scale.fill_(float(value))

    @property
    def energy_shift(self) -> float:
        """eV: the constant added to every structure's energy (spread over its atoms in ``reference_energy``)."""
        return float(self._shift)

    @energy_shift.setter
    def energy_shift(self, value: float):
        self._shift.fill_(float(value))

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding_in.weight.device

    @property
    def cutoff(self) -> float | None:
        """The neighbour-list cutoff in Å (sparse mode), or None (dense mode)."""
        return self.config.cutoff

    def with_cutoff(self, cutoff: float | None, width: float | None = None) -> "SAKEPotential":
        """A copy in sparse mode with ``cutoff`` (Å), same parameters; None: unchanged.

        A dense-trained model accepts any cutoff: with r_c − width beyond every interatomic distance of a
        molecule it gives the dense numbers. A sparse-trained model only its own: its weights never saw
        neighbours beyond its cutoff, and a shorter one would drop neighbours it was trained with.
        """
        if cutoff is None or (cutoff == self.config.cutoff and width in (None, self.config.cutoff_width)):
            return self
        if self.config.cutoff is not None:
            raise ConfigError(
                f"this model was trained with a cutoff of {self.config.cutoff:g} Å and supports only that one; "
                f"{float(cutoff):g} Å would " + ("include neighbours its weights never saw"
                                                if cutoff > self.config.cutoff else "drop neighbours it was "
                                                "trained with") + f" (leave the cutoff at {self.config.cutoff:g} Å)")
        other = copy.deepcopy(self)
        other.config = replace(self.config, cutoff=cutoff, cutoff_width=width or self.config.cutoff_width)
        return other

    def neighbour_table(self, positions: torch.Tensor, mask: torch.Tensor, neighbours: NeighbourTable | None = None,
                        cell: torch.Tensor | None = None, pbc: torch.Tensor | None = None) -> NeighbourTable | None:
        """None in dense mode (which refuses periodic input); in sparse mode ``neighbours``, or else a fresh
        neighbour list of ``positions`` in ``cell`` (molecules: no cell)."""
        periodic = pbc is not None and bool(pbc.any())
        if self.cutoff is None:
            if periodic or neighbours is not None:
                raise InputError("periodic structures and neighbour lists need the sparse mode: this model is "
                                 "dense (all pairs, no minimum image). Train with a cutoff (sake-md train "
                                 "--cutoff 5.0) or evaluate with one (SAKECalculator(..., cutoff=R)).")
            return None
        if neighbours is None:
            from .neighbours import batch_table

            neighbours = batch_table(positions, mask, self.cutoff, cell if periodic else None,
                                     pbc if periodic else None)
        return neighbours

    def forward(self, species: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                neighbours: NeighbourTable | None = None, cell: torch.Tensor | None = None,
                pbc: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled per-atom energies without the constant terms. Shape: (B, N), (B, N, 3), (B, N) -> (B, N).

        Sparse mode: ``neighbours`` (a table from ``sake_md.neighbours``), or else ``cell`` (B, 3, 3) and
        ``pbc`` (B, 3) for a fresh list (molecules: neither).
        """
        table = self.neighbour_table(positions, mask, neighbours, cell, pbc)
        graph = None if table is None else NeighbourGraph.build(table, positions, self.cutoff,
                                                                self.config.cutoff_width)
        return self.backbone(species, positions, mask, graph) * self._scale  # float32 stays float32 (0-d operand)

    def reference_energy(self, species: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-atom constant terms (shift/N + e_ref(z)) in float64. Shape: (B, N) -> (B, N)."""
        n = mask.sum(-1, keepdim=True).to(torch.float64)
        return (self._refs.to(species.device)[species] + self._shift / n) * mask

    def predict(self, species, positions, mask, forces: bool = True, training: bool = False, cell=None, pbc=None,
                stress: bool = False, neighbours: NeighbourTable | None = None) -> dict:
        """Energies (B,), per-atom energies (B, N) in float64 and forces (B, N, 3) in the model dtype.

        ``training=True`` keeps the graph so that a loss on forces can be differentiated. Periodic
        structures (sparse mode): ``cell`` (B, 3, 3) Å, rows the lattice vectors, and ``pbc`` (B, 3);
        ``stress=True`` adds stress (B, 3, 3) in eV/Å³, σ = (1/V) ∂E/∂ε for a symmetric strain ε of
        positions and cell (ASE's sign), and needs every structure periodic in all three directions.
        """
        if (forces or stress) and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)  # leave the caller's tensor as it is
        with torch.set_grad_enabled(forces or training or stress):
            neighbours = self.neighbour_table(positions, mask, neighbours, cell, pbc)
            strain, x = None, positions
            if stress:
                if neighbours is None or cell is None or pbc is None or not bool(pbc.all()):
                    raise InputError("stress needs a structure periodic in all three directions (and a model "
                                     "in sparse mode)")
                strain = torch.zeros(len(positions), 3, 3, dtype=positions.dtype, device=positions.device,
                                     requires_grad=True)
                x, neighbours = apply_strain(strain, positions, neighbours)
            atomic = self(species, x, mask, neighbours)
        energy = atomic.sum(-1)
        out = {}
        if forces or stress:
            grads = gradients(energy, [positions, strain] if stress else [positions], training)
            if forces:
                out["forces"] = -grads[0]
            if stress:
                out["stress"] = grads[1] / torch.linalg.det(cell.to(grads[1].dtype)).abs().view(-1, 1, 1)
        ref = self.reference_energy(species, mask)
        out["energies"] = (atomic if training else atomic.detach()).to(torch.float64) + ref
        out["energy"] = out["energies"].sum(-1)
        out["energy_model"] = energy if training else energy.detach()
        return out


def gradients(energy: torch.Tensor, inputs: list[torch.Tensor], training: bool = False) -> list[torch.Tensor]:
    """∂E/∂t for each t of ``inputs`` (positions, strain), in one backward pass. Shape: energy (B,)."""
    return list(torch.autograd.grad(energy.sum(), inputs, create_graph=training, retain_graph=training))


def compute_forces(energy: torch.Tensor, positions: torch.Tensor, training: bool = False) -> torch.Tensor:
    """F = -∂E/∂x. Shape: energy (B,), positions (B, N, 3) -> (B, N, 3)."""
    return -gradients(energy, [positions], training)[0]


def apply_strain(strain: torch.Tensor, positions: torch.Tensor, neighbours: NeighbourTable
                 ) -> tuple[torch.Tensor, NeighbourTable]:
    """x → x(I + ε), S·cell → S·cell(I + ε), ε = (strain + strainᵀ)/2, so that ∂E/∂strain at 0 is the
    symmetric strain derivative. Shape: strain (B, 3, 3), positions (B, N, 3)."""
    eps = 0.5 * (strain + strain.transpose(1, 2))
    shifts = neighbours.shifts.to(positions.dtype)
    strained = shifts + torch.matmul(shifts.flatten(1, 2), eps).view_as(shifts)
    return positions + torch.matmul(positions, eps), neighbours.with_shifts(strained)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
