"""A SAKE potential as a TorchScript module of OpenMM's units, for openmm-torch's ``TorchForce``.

``export_energy_module(potential, numbers, periodic)`` returns a ``torch.jit.ScriptModule`` whose
``forward(positions, box=None)`` maps positions (N, 3) in nm (and the box (3, 3) in nm, rows the
vectors, when ``periodic``) to the energy in kJ/mol, a float64 scalar. Forces are −∂E/∂x by autograd
through the module (openmm-torch does that when ``setOutputsForces`` is off; the Python force in
``sake_md.engines.openmm`` does the same). Everything a checkpoint defines rides along inside: the
species of the N atoms, the energy scale, and shift + Σ e_ref(z) as one float64 constant.

How it is built. The network is traced (``torch.jit.trace``): ``SAKEPotential`` has Python control flow
and NamedTuple graphs that ``torch.jit.script`` does not take, but for a fixed set of atoms its
computation is a fixed graph of ATen ops. Dense mode: that graph, positions in. Sparse mode: the
neighbour table (which atoms, which periodic image) changes as atoms move, so a small scripted
function builds it in every call (all pairs and images, O(N²); fine for a solute or a few hundred
atoms) and hands it to a network traced with shapes that stay dynamic in the neighbour-slot axis.
"""

import math

import torch
from ase import units
from torch import nn

from ..graph import NeighbourGraph, NeighbourTable
from ..model import SAKEPotential

__all__ = ["NM", "KJ_PER_MOL", "export_energy_module", "neighbour_table"]

NM = units.nm  # Å per nm (10)
KJ_PER_MOL = units.kJ / units.mol  # eV per kJ/mol


@torch.jit.script
def neighbour_table(x: torch.Tensor, cell: torch.Tensor | None, cutoff: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (i, j, image) closer than ``cutoff``, padded into slots as ``sake_md.neighbours`` does.

    Shape: x (N, 3) Å, cell (3, 3) Å rows = lattice vectors (None: no periodicity) -> index (1, N, K),
    shifts (1, N, K, 3) Å, valid (1, N, K). Shifts are constants (no gradient), as in the ASE path.
    """
    x = x.detach()
    n = x.shape[0]
    if cell is None:
        images = torch.zeros(1, 3, dtype=x.dtype, device=x.device)
        fold = torch.zeros_like(x)
    else:
        cell = cell.detach().to(x.dtype)
        volume = torch.linalg.det(cell).abs()
        # planes of lattice vector k are V/|a_l × a_m| apart: that many cells per cutoff, plus one because
        # wrapped fractional differences lie in (−1, 1)
        cross = torch.linalg.cross(cell.roll(-1, 0), cell.roll(-2, 0))
        reach = torch.ceil(cutoff * torch.linalg.vector_norm(cross, dim=1) / volume).to(torch.long) + 1
        ranges = [torch.arange(-int(reach[k]), int(reach[k]) + 1, device=x.device) for k in range(3)]
        grid = torch.cartesian_prod(ranges[0], ranges[1], ranges[2]).to(x.dtype)
        images = grid @ cell
        fold = torch.floor(x @ torch.linalg.inv(cell)) @ cell  # x − fold lies in the home cell
    w = x - fold
    r = w.view(1, n, 1, 3) - w.view(n, 1, 1, 3) + images.view(1, 1, -1, 3)  # (N_i, N_j, S, 3): w_j − w_i + S
    d = torch.linalg.vector_norm(r, dim=-1)
    self_pair = (torch.arange(n, device=x.device).view(n, 1) == torch.arange(n, device=x.device).view(1, n))
    self_pair = self_pair.unsqueeze(-1) & (images.abs().sum(-1) == 0).view(1, 1, -1)
    i, j, s = ((d < cutoff) & ~self_pair).nonzero().unbind(1)  # sorted by i
    counts = torch.bincount(i, minlength=n)
    k = max(int(counts.max()) if n > 0 else 0, 1)
    slot = torch.arange(i.shape[0], device=x.device) - (torch.cumsum(counts, 0) - counts)[i]
    index = torch.arange(n, device=x.device).view(n, 1).repeat(1, k)  # empty slots point at i itself
    shifts = torch.zeros(n, k, 3, dtype=x.dtype, device=x.device)
    valid = torch.zeros(n, k, dtype=torch.bool, device=x.device)
    index[i, slot] = j
    shifts[i, slot] = images[s] + fold[i] - fold[j]  # r_ij = x_j − x_i + shift in the unwrapped positions
    valid[i, slot] = True
    return index.unsqueeze(0), shifts.unsqueeze(0), valid.unsqueeze(0)


class _DenseNetwork(nn.Module):
    """The traced part in dense mode. Shape: x (1, N, 3) Å -> model energy () in eV, without constants."""

    def __init__(self, potential: SAKEPotential, species: torch.Tensor):
        super().__init__()
        self.potential = potential
        self.register_buffer("species", species)
        self.register_buffer("mask", torch.ones_like(species, dtype=torch.bool))

    def forward(self, x):
        return self.potential(self.species, x, self.mask).sum()


class _SparseNetwork(_DenseNetwork):
    """The traced part in sparse mode. Shape: x (1, N, 3) Å, index/valid (1, N, K), shifts (1, N, K, 3)."""

    def forward(self, x, index, shifts, valid):
        p = self.potential
        graph = NeighbourGraph.build(NeighbourTable(index, shifts, valid), x, p.cutoff, p.config.cutoff_width)
        return (p.energy_scale * p.backbone(self.species, x, self.mask, graph)).sum()


class DenseEnergy(nn.Module):
    """Positions (N, 3) nm -> energy () kJ/mol, float64. Scripted around the traced dense network."""

    def __init__(self, network: torch.jit.ScriptModule, constant_eV: float, dtype: torch.dtype,
                 indices: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("indices", indices)  # the atoms of the potential among the system's (all: arange)
        self.constant = constant_eV  # shift + Σ e_ref(z), eV, kept in float64 beside a float32 network
        self.dtype = dtype
        self.kj_per_mol = 1.0 / KJ_PER_MOL

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        x = positions.to(self.indices.device).index_select(0, self.indices)
        x = (x * 10.0).to(self.dtype).unsqueeze(0)  # nm -> Å, then the model's dtype (as the ASE path rounds)
        return (self.network(x).to(torch.float64) + self.constant) * self.kj_per_mol


class SparseEnergy(nn.Module):
    """Positions (N, 3) nm [, box (3, 3) nm when ``periodic``] -> energy () kJ/mol, float64; a fresh
    neighbour table per call around the traced sparse network."""

    def __init__(self, network: torch.jit.ScriptModule, constant_eV: float, dtype: torch.dtype,
                 indices: torch.Tensor, cutoff: float, periodic: bool):
        super().__init__()
        self.network = network
        self.register_buffer("indices", indices)
        self.constant = constant_eV
        self.dtype = dtype
        self.cutoff = cutoff  # Å
        self.periodic = periodic
        self.kj_per_mol = 1.0 / KJ_PER_MOL

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        x = positions.to(self.indices.device).index_select(0, self.indices)
        x = (x * 10.0).to(self.dtype).unsqueeze(0)
        cell: torch.Tensor | None = None
        if self.periodic and box is not None:
            cell = (box * 10.0).to(self.dtype)
        index, shifts, valid = neighbour_table(x[0], cell, self.cutoff)
        return (self.network(x, index, shifts, valid).to(torch.float64) + self.constant) * self.kj_per_mol


def export_energy_module(potential: SAKEPotential, numbers, periodic: bool = False, indices=None
                         ) -> torch.jit.ScriptModule:
    """The TorchScript module for the atoms ``numbers`` (N,), in the potential's dtype and device.

    ``indices`` (N,): where those atoms are among the positions the module is given (openmm-torch passes
    every particle of the System); default: the first N, in order.
    ``potential`` must know every element (callers check, naming the atom) and be an inference potential
    (``sake_md.inference.inference_potential``). ``periodic`` needs sparse mode.
    """
    species = potential.species_index[torch.as_tensor(list(numbers), dtype=torch.long)].unsqueeze(0)
    species = species.to(potential.device)
    constant = float(potential.reference_energy(species, torch.ones_like(species, dtype=torch.bool)).sum())
    example = _example_positions(len(species[0]), potential.dtype, potential.device)
    sparse = potential.cutoff is not None
    with torch.enable_grad():  # tracing records the ops autograd will differentiate later
        if sparse:
            network = _SparseNetwork(potential, species)
            table = neighbour_table(example[0], None, potential.cutoff)
            traced = torch.jit.trace(network, (example, *table), check_trace=False)
        else:
            traced = torch.jit.trace(_DenseNetwork(potential, species), (example,), check_trace=False)
    n = len(species[0])
    indices = torch.arange(n) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    indices = indices.to(potential.device)
    if sparse:
        module = SparseEnergy(traced, constant, potential.dtype, indices, float(potential.cutoff), periodic)
    else:
        module = DenseEnergy(traced, constant, potential.dtype, indices)
    return torch.jit.script(module)


def _example_positions(n: int, dtype, device) -> torch.Tensor:
    """A compact, non-degenerate cluster (1, n, 3) in Å for tracing: atoms ~1.2 Å apart on a jittered grid."""
    side = max(1, math.ceil(n ** (1 / 3)))
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    jitter = torch.sin(torch.arange(n * 3, dtype=torch.float64).view(n, 3) * 1.7) * 0.1
    return ((grid.to(torch.float64) * 1.2 + jitter).to(dtype=dtype, device=device)).unsqueeze(0)
