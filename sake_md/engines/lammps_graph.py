"""The pair structure of one LAMMPS rank, and SAKE's layers run on it with a ghost exchange between layers.

LAMMPS hands each rank n local atoms, g ghost atoms (copies of atoms owned elsewhere, or periodic images)
and the pairs (i local, j local or ghost) within the cutoff with their vectors r⁰_ij, images applied. No
cell, no absolute positions. SAKE moves its coordinates from layer to layer, and only differences enter a
layer, so the rank carries the displacement Δx accumulated so far instead of positions:

    layer l's edge vector    r_ij = r⁰_ij + Δx_j − Δx_i

``LAMMPSGraph`` offers a layer what ``PairMasks`` and ``NeighbourGraph`` offer (``sake_md.graph``): receivers
are the n local atoms (rows 0..n-1), senders any of the n + g atoms, the pair axis holds K slots per local
atom filled from LAMMPS' pair list, and the envelope c(|r⁰_ij|) and the smooth count 1/n_i are those of the
sparse mode. A layer updates h and Δx of the local atoms only; ``run_backbone`` then fills the ghost rows
from their owners with ONE exchange of [h ‖ Δx] (width H + 3) per layer boundary, L − 1 for L layers (h⁰
is the species embedding and Δx⁰ = 0, known for ghosts without one). ``GhostExchange`` is that exchange
as an autograd function: its backward is LAMMPS' reverse exchange, which sums the gradients that ghost rows
received on every rank into the owner's row, so ∂E/∂r⁰_ij is the derivative of the TOTAL energy.

Shapes (n local atoms, T = n + g atoms on the rank, P pairs, K slots, F features):

=============  ============  =====================================================
pair_i         (P,)          local receiver of each pair (0..n-1)
pair_j         (P,)          sender (0..T-1)
rij            (P, 3)        r⁰_ij = x_j − x_i, images applied (Å)
flat_index     (n·K,)        sender row of each slot (i itself in empty slots)
slot           (P,)          the flat slot i·K + k of each pair, to scatter r⁰ into slots
h, Δx          (1, T, F)     node features of all atoms on the rank; layers return (1, n, F)
=============  ============  =====================================================
"""

from typing import NamedTuple

import torch

from ..geometry import distances, smooth_cutoff
from ..graph import MASKED_LOGIT

__all__ = ["LAMMPSGraph", "PairSlots", "GhostExchange", "run_backbone", "exchange_width"]


class PairSlots(NamedTuple):
    """Where each LAMMPS pair sits in the padded (n, K) slot table. Built once per call, no gradients.

    Shapes: flat_index (n·K,) sender rows; slot (P,) flat slot i·K + k of each pair; valid (1, n, K, 1) float.
    """

    flat_index: torch.Tensor
    slot: torch.Tensor
    valid: torch.Tensor
    n: int
    K: int

    @classmethod
    def build(cls, pair_i: torch.Tensor, pair_j: torch.Tensor, n: int, dtype: torch.dtype) -> "PairSlots":
        """Shape: pair_i (P,), pair_j (P,) long, on the model's device."""
        device = pair_i.device
        counts = torch.bincount(pair_i, minlength=n)
        K = max(1, int(counts.max())) if n and len(pair_i) else 1
        order = torch.argsort(pair_i, stable=True)  # LAMMPS lists pairs by i already; do not rely on it
        start = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=device)
        slot = pair_i * K + (rank - start[pair_i])
        flat_index = torch.arange(n, device=device).repeat_interleave(K)  # empty slots: i itself, r = 0
        flat_index[slot] = pair_j
        valid = torch.zeros(n * K, dtype=dtype, device=device)
        valid[slot] = 1.0
        return cls(flat_index, slot, valid.view(1, n, K, 1), n, K)


class LAMMPSGraph(NamedTuple):
    """LAMMPS' pairs of one rank as a layer's graph: receivers the n local atoms, senders all T atoms.

    Shapes: r0 (1, n, K, 3) the pair vectors in their slots (0 in empty slots); flat_index (n·K,);
    pair_weight (1, n, K, 1) 1.0 on real slots; envelope (1, n, K, 1); inv_n (1, n, 1, 1).
    """

    r0: torch.Tensor
    flat_index: torch.Tensor
    pair_weight: torch.Tensor
    envelope: torch.Tensor
    inv_n: torch.Tensor

    @classmethod
    def build(cls, slots: PairSlots, rij: torch.Tensor, cutoff: float, width: float) -> "LAMMPSGraph":
        """Shape: rij (P, 3) in the model dtype, a leaf that ∂E/∂r⁰ is taken for."""
        r0 = rij.new_zeros(slots.n * slots.K, 3).index_copy(0, slots.slot, rij).view(1, slots.n, slots.K, 3)
        c = smooth_cutoff(distances(r0), cutoff, width).unsqueeze(-1) * slots.valid
        inv_n = 1.0 / (1.0 + c.sum(2, keepdim=True))
        return cls(r0, slots.flat_index, slots.valid, c, inv_n)

    @property
    def n(self) -> int:
        return self.r0.shape[1]

    def senders(self, t: torch.Tensor) -> torch.Tensor:
        """Node values at the sender of each slot. Shape: (1, T, F) -> (1, n, K, F)."""
        n, K = self.r0.shape[1:3]
        return t[0].index_select(0, self.flat_index).view(1, n, K, t.shape[-1])

    def receivers(self, t: torch.Tensor) -> torch.Tensor:
        """The local atoms' rows. Shape: (1, T, F) -> (1, n, F)."""
        return t[:, :self.n]

    def edge_vectors(self, dx: torch.Tensor) -> torch.Tensor:
        """r⁰_ij + Δx_j − Δx_i. Shape: (1, T, 3) -> (1, n, K, 3)."""
        return self.r0 + self.senders(dx) - self.receivers(dx).unsqueeze(2)

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """c_ij · a_ij, as ``NeighbourGraph.attention``. Shape: (1, n, K, heads) -> (1, n, K, heads)."""
        c = self.envelope
        logits = logits.masked_fill(c == 0, MASKED_LOGIT)
        w = c * torch.exp(logits - logits.detach().amax(dim=2, keepdim=True))
        total = w.sum(dim=2, keepdim=True)
        return c * w / torch.where(total > 0, total, torch.ones_like(total))


def exchange_width(hidden: int) -> int:
    """Values per atom in one exchange: h and Δx."""
    return hidden + 3


class GhostExchange(torch.autograd.Function):
    """Local rows (n, F) -> all rows (T, F), the ghost rows from their owners (LAMMPS' forward exchange);
    backward: LAMMPS' reverse exchange, which adds every ghost row's gradient (on any rank) to its owner.

    ``comm`` is the ML-IAP data object (or a fake of it) with ``forward_exchange(src, dst, width)`` and
    ``reverse_exchange(src, dst, width)`` on contiguous (T, width) buffers of the model's dtype and device.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, comm, total: int) -> torch.Tensor:
        n, width = local.shape
        ctx.comm, ctx.n = comm, n
        src = local.new_zeros(total, width)
        src[:n] = local
        dst = torch.empty_like(src)
        comm.forward_exchange(src, dst, width)
        dst[:n] = local  # the local rows are ours, whatever the buffer's local rows hold
        return dst

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        ctx.comm.reverse_exchange(grad, out, grad.shape[1])
        return out[:ctx.n], None, None


def run_backbone(backbone, species: torch.Tensor, graph: LAMMPSGraph, comm) -> torch.Tensor:
    """SAKE's layer loop on one rank: raw per-atom outputs y_i of the local atoms.

    ``comm`` exchanges ghost rows (``GhostExchange``); every rank calls it the same L − 1 times, with or
    without local atoms and pairs, since LAMMPS' exchange is collective. Shape: species (T,) -> y (n,).
    """
    total = species.shape[0]
    h = torch.nn.functional.embedding(species, backbone.embedding_in.weight.t()) + backbone.embedding_in.bias
    h = h.unsqueeze(0)  # (1, T, H): h⁰ of ghosts is their species' embedding, no exchange needed
    dx, v = h.new_zeros(1, total, 3), None
    for k, layer in enumerate(backbone.layers):
        if k > 0:
            both = GhostExchange.apply(torch.cat([h, dx], -1)[0], comm, total).unsqueeze(0)
            h, dx = both[..., :-3], both[..., -3:]
        h, dx, v = layer(h, dx, v, graph)
    return backbone.embedding_out(h).squeeze(-1)[0]
