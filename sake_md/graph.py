"""The two pair structures a SAKE layer runs on: ``PairMasks``, the masks of all pairs of a padded molecule
(the paper's model), and ``NeighbourGraph``, a padded table of the neighbours within a cutoff (the sparse mode, for
periodic and large systems). Both are computed once per forward pass and offer the layer the same
six things: ``edge_vectors``, ``senders``, ``receivers``, ``pair_weight``, ``attention`` and ``inv_n``; the pair axis
holds the N atoms of the molecule in one and the K neighbour slots of each atom in the other, so
the layer and every spatial block run unchanged on either (same parameters, same checkpoints).

The sparse mode, and why it is the dense model when r_c exceeds the molecule
-----------------------------------------------------------------------------
Pairs come from a neighbour list of the INPUT positions (periodic images through shift vectors S·cell).
Each pair carries the envelope c_ij = c(d⁰_ij) of its input distance (``geometry.smooth_cutoff``:
1 up to r_c − w, 0 from r_c), the same in every layer, so a pair enters the graph with weight 0
even though later layers move the atoms. Where the dense model has a softmax over j, means over
the N atoms and messages h̃_ij, the sparse one has

    a_ij = c_ij e_ij / Σ_k c_ik e_ik,  e = exp(logit)   softmax with the envelope as a prior weight
    h̃_ij = c_ij · (a_ij ⊗ h_ij)                          messages carry one more envelope factor
    1/n_i = 1 / (1 + Σ_j c_ij)                           a smooth count of neighbours, self included

The first makes the attention continuous as a pair enters or leaves (its weight in the normalisation
goes to 0); the second makes an atom whose last neighbour leaves lose its message continuously
(without it a_ij = 1 for a lone neighbour right up to r_c, then 0 beyond); the third is the "mean
over neighbours actually present" without a jump in the count. Everything that reads h̃ (λ = tanh(W h̃),
A h̃, B h̃, m_i = Σ_j h̃_ij) is bias-free, so a pair with c = 0 contributes exactly nothing. When every
pair of a molecule lies within r_c − w, c = 1 for all of them: the three lines become the dense
softmax, h̃ and 1/N, and the sparse model computes the dense model's numbers (to round-off).
"""

from typing import NamedTuple

import torch

from .geometry import distances, edge_vectors, neighbour_mask, smooth_cutoff

MASKED_LOGIT = -1e5  # the reference subtracts 1e5 on the diagonal; exp() of it underflows to 0


class PairMasks(NamedTuple):
    """The masks of all pairs of padded molecules (no edge list: every pair is an edge), computed once per
    forward pass.

    Shapes: pair_weight (B, N, N, 1) 1.0 for pairs of distinct real atoms, masked_logits (B, N, N, 1)
    True where attention is excluded, inv_n (B, 1, 1, 1) 1 / number of real atoms.
    """

    pair_weight: torch.Tensor
    masked_logits: torch.Tensor
    inv_n: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, dtype: torch.dtype) -> "PairMasks":
        """Shape: mask (B, N)."""
        pairs = neighbour_mask(mask).unsqueeze(-1)
        inv_n = 1.0 / mask.sum(-1).to(dtype).view(-1, 1, 1, 1)
        return cls(pairs.to(dtype), ~pairs, inv_n)

    def edge_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """r_ij = x_j - x_i. Shape: (B, N, 3) -> (B, N, N, 3)."""
        return edge_vectors(x)

    def senders(self, t: torch.Tensor) -> torch.Tensor:
        """Node values at the sending end j of each pair, broadcast. Shape: (B, N, F) -> (B, 1, N, F)."""
        return t.unsqueeze(1)

    def receivers(self, t: torch.Tensor) -> torch.Tensor:
        """Node values of the receiving atoms: every atom receives. Shape: (B, N, F) -> (B, N, F)."""
        return t

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over j without i itself and padding. Shape: (B, N, N, K) -> (B, N, N, K)."""
        return torch.softmax(logits.masked_fill(self.masked_logits, MASKED_LOGIT), dim=2)


class NeighbourTable(NamedTuple):
    """Who neighbours whom: the output of ``sake_md.neighbours``, before it meets the model.

    Shapes: index (B, N, K) long, the atom j (0..N-1 of the same structure) in slot k of atom i
    (i itself in empty slots); shifts (B, N, K, 3) float, S·cell in Å (0 in empty slots);
    valid (B, N, K) bool.
    """

    index: torch.Tensor
    shifts: torch.Tensor
    valid: torch.Tensor

    def with_shifts(self, shifts: torch.Tensor) -> "NeighbourTable":
        return self._replace(shifts=shifts)


class NeighbourGraph(NamedTuple):
    """Neighbour slots within a cutoff (see the module docstring for the maths).

    Shapes: flat_index (B·N·K,) sender rows of the flattened (B·N, F) node tensors; shifts (B, N, K, 3);
    pair_weight (B, N, K, 1) 1.0 on real slots; envelope (B, N, K, 1); inv_n (B, N, 1, 1).
    """

    flat_index: torch.Tensor
    shifts: torch.Tensor
    pair_weight: torch.Tensor
    envelope: torch.Tensor
    inv_n: torch.Tensor

    @classmethod
    def build(cls, table: NeighbourTable, positions: torch.Tensor, cutoff: float, width: float) -> "NeighbourGraph":
        """Shape: positions (B, N, 3); the envelope is evaluated on these (the input) positions."""
        B, N, K = table.index.shape
        offsets = N * torch.arange(B, device=positions.device).view(-1, 1, 1)
        weight = table.valid.unsqueeze(-1).to(positions.dtype)
        graph = cls((table.index + offsets).reshape(-1), table.shifts.to(positions.dtype), weight, weight, weight)
        c = smooth_cutoff(distances(graph.edge_vectors(positions)), cutoff, width).unsqueeze(-1) * weight
        inv_n = 1.0 / (1.0 + c.sum(2, keepdim=True))
        return graph._replace(envelope=c, inv_n=inv_n)

    def senders(self, t: torch.Tensor) -> torch.Tensor:
        """Node values at the neighbour in each slot. Shape: (B, N, F) -> (B, N, K, F)."""
        B, N, K = self.shifts.shape[:3]
        return t.reshape(B * N, -1).index_select(0, self.flat_index).view(B, N, K, -1)

    def receivers(self, t: torch.Tensor) -> torch.Tensor:
        """Node values of the receiving atoms: every atom receives. Shape: (B, N, F) -> (B, N, F)."""
        return t

    def edge_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """r_ik = x_j + S·cell - x_i. Shape: (B, N, 3) -> (B, N, K, 3)."""
        return self.senders(x) + self.shifts - x.unsqueeze(2)

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """c_ij · a_ij: the envelope-weighted softmax over slots, times the message envelope.

        Shape: (B, N, K, heads) -> (B, N, K, heads).
        """
        c = self.envelope
        dead = c == 0  # empty slots and pairs beyond r_c (a skin): exactly zero weight
        logits = logits.masked_fill(dead, MASKED_LOGIT)
        w = c * torch.exp(logits - logits.detach().amax(dim=2, keepdim=True))  # the shift cancels exactly
        total = w.sum(dim=2, keepdim=True)
        return c * w / torch.where(total > 0, total, torch.ones_like(total))  # no neighbour: all zero
