"""Spatial blocks: the one part of a SAKE layer that the ablation variants swap.

A spatial block turns the attention-weighted edge features h̃_ij and the edge directions u_ij into
invariant node features h^spa_i, and (optionally) a velocity increment Δv_i for the coordinate
update. Every block has the same call signature::

    h_spa, dv = block(h_tilde, u, inv_n)

    h_tilde (B, N, P, C)  attention-weighted edge features (zero for masked pairs)
    u       (B, N, P, 3)  unit edge vectors, zero for masked pairs and on the diagonal
    inv_n   (B, 1, 1, 1)  1 / number of real atoms of each molecule (dense), or
            (B, N, 1, 1)  1 / smooth neighbour count of each atom (sparse mode, ``sake_md.graph``)
    h_spa   (B, N, out_features) or None
    dv      (B, N, 3) or None (None: this block never moves atoms)

The pair axis P holds the N atoms (dense graph) or the K neighbour slots of each atom (sparse mode);
a block only sums over it, so one implementation serves both, with the same parameters.

h̃ is head-major: channel k·H + f holds a_ij^k h_ij[f]. ``h_tilde_maps`` names a block's linear maps
that read h̃, so that a checkpoint written with the reference's f·K + k order can be migrated.

``SPATIAL_BLOCKS`` maps a variant name to its block class; it is the single list of variants.
"""

import torch
from torch import nn

from .modules import linear, mlp
from .spatial_dot import DotProductScalarization
from .spatial_sh import SphericalHarmonicAttention


class SpatialAttention(nn.Module):
    """SAKE's spatial attention (docs/model.md, steps 5 and 7).

    λ_ij = tanh(W_x h̃_ij); V̄_ic = (1/N) Σ_j λ_ijc u_ij; h^spa = MLP(|V̄_i|²); Δv_i = Σ_c w_c V̄_ic.
    V̄ is one batched matrix product over j: nothing of shape (N, N, C, 3) is formed.
    """

    moves_atoms = True
    h_tilde_maps = ("x_mixing",)

    def __init__(self, hidden: int, coefficients: int):
        super().__init__()
        self.out_features = hidden
        self.x_mixing = linear(coefficients, coefficients, bias=False)
        self.post_norm_mlp = mlp(coefficients, hidden, hidden, last_activation=True)
        self.v_mixing = linear(coefficients, 1, bias=False)

    def combine(self, h_tilde: torch.Tensor, u: torch.Tensor, inv_n: torch.Tensor) -> torch.Tensor:
        """V̄ as (B, N, 3, C): uᵀλ keeps λ's gradient in λ's own layout (no transposed copy).

        Shape: (B, N, N, C), (B, N, N, 3), (B, 1, 1, 1) -> (B, N, 3, C).
        """
        lam = torch.tanh(self.x_mixing(h_tilde))
        return torch.matmul(u.transpose(-1, -2), lam) * inv_n

    def forward(self, h_tilde, u, inv_n):
        """Shape: (B, N, N, C), (B, N, N, 3), (B, 1, 1, 1) -> (B, N, H), (B, N, 3)."""
        v_bar = self.combine(h_tilde, u, inv_n)
        h_spa = self.post_norm_mlp((v_bar * v_bar).sum(-2))
        dv = torch.matmul(v_bar, self.v_mixing.weight.squeeze(0))  # Σ_c w_c V̄_ic
        return h_spa, dv


class NoSpatial(nn.Module):
    """Spatial attention removed: no angular invariants and no coordinate update."""

    moves_atoms = False
    h_tilde_maps = ()

    def __init__(self, hidden: int, coefficients: int):
        super().__init__()
        self.out_features = 0

    def forward(self, h_tilde, u, inv_n):
        return None, None


SPATIAL_BLOCKS: dict[str, type[nn.Module]] = {
    "sake": SpatialAttention,
    "sake-no-spatial": NoSpatial,
    "sake-sh": SphericalHarmonicAttention,
    "sake-dot": DotProductScalarization,
}
