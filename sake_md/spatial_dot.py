"""``sake-dot``: spatial attention's invariants replaced by explicit dot-product scalarization.

Over neighbour pairs (j, k) of atom i, with cos_ijk = u_ij · u_ik::

    s_ijk = (A h̃_ij) ⊙ (B h̃_ik) ⊙ ψ(cos_ijk),   ψ_c(cos) = Σ_b W_cb T_b(cos),
    h^spa_i = MLP((1/N²) Σ_jk s_ijk),

T_b the Chebyshev polynomials of degree 0..n_basis−1 on [−1, 1] (cos is inside: |u| < 1). SAKE's
invariant is the special case ψ(cos) = cos, A = B = λ; here the angular function is any polynomial
of degree < n_basis, learned per channel (Villar et al., "Scalars are universal"). The velocity update
is SAKE's (λ = tanh(W_x h̃), V̄ = (1/N) λᵀu, Δv = Σ_c w_c V̄_c).

Cost and defaults: the pair sum is O(N²·C'·n_basis) per atom. It is contracted over k by one batched
matrix product per atom for all basis functions, G_ibjc = Σ_k T_b(cos_ijk) b_ikc, then over j
elementwise, so the largest tensor is (B, N, n_basis, N, C'), never (N, N, N, C'). C' = 64 channels
and 8 basis functions (degree ≤ 7) keep the pair sum's multiply-adds below those of the C×C map that
dominates SAKE while N < C²/(n_basis·C') = 128 atoms (aspirin: 21³·8·64 ≈ 4.7 M vs 21²·256² ≈ 29 M
per layer); A and B add 2·C·C' (half a C×C map) per edge. The intermediate is memory-bound, so the variant
costs more time than SAKE on batches (benchmarks/bench_variants.py, docs/model.md). A and B have
no bias, so the zero h̃ of the diagonal and of padded pairs contributes exactly nothing.

Parameters per layer (MD17 configuration, C = 256, H = 64): A, B 32,768, ψ 512, post MLP (C' → H → H)
8,320, and SAKE's λ and w maps 65,792; 20,992 more than SAKE's spatial attention.
"""

import torch
from torch import nn

from .errors import ConfigError
from .modules import linear, mlp


def chebyshev(x: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """T_0..T_{n−1}(x) by the recurrence T_{b+1} = 2x T_b − T_{b−1}. Shape: (...) -> (..., n) stacked at dim."""
    terms = [torch.ones_like(x), x]
    while len(terms) < n:
        terms.append(2 * x * terms[-1] - terms[-2])
    return torch.stack(terms[:n], dim=dim)


def pair_cosines(u: torch.Tensor) -> torch.Tensor:
    """cos_ijk = u_ij · u_ik. Shape: (B, N, N, 3) -> (B, N, N, N)."""
    return torch.matmul(u, u.transpose(-1, -2))


class DotProductScalarization(nn.Module):
    """h^spa_i = MLP((1/N²) Σ_jk (A h̃_ij) ⊙ (B h̃_ik) ⊙ ψ(u_ij·u_ik)); Δv as in SAKE."""

    moves_atoms = True
    h_tilde_maps = ("left", "right", "x_mixing")

    def __init__(self, hidden: int, coefficients: int, channels: int = 64, n_basis: int = 8):
        super().__init__()
        for name, value in (("channels", channels), ("n_basis", n_basis)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"sake-dot needs a positive integer {name}, got {value!r}")
        self.channels, self.n_basis = channels, n_basis
        self.out_features = hidden
        self.left = linear(coefficients, channels, bias=False)    # A
        self.right = linear(coefficients, channels, bias=False)   # B
        self.angular = linear(n_basis, channels, bias=False)      # W: basis -> ψ_c
        self.post_norm_mlp = mlp(channels, hidden, hidden, last_activation=True)
        self.x_mixing = linear(coefficients, coefficients, bias=False)  # SAKE's λ, for Δv only
        self.v_mixing = linear(coefficients, 1, bias=False)

    def scalars(self, h_tilde: torch.Tensor, u: torch.Tensor, inv_n: torch.Tensor) -> torch.Tensor:
        """(1/N²) Σ_jk s_ijk. Shape: (B, N, P, C), (B, N, P, 3), (B, 1|N, 1, 1) -> (B, N, C')."""
        a, b = self.left(h_tilde), self.right(h_tilde)                  # (B, N, N, C')
        n = u.shape[2]  # the pair axis (N atoms, or K slots in the sparse mode)
        basis = chebyshev(pair_cosines(u), self.n_basis, dim=2)          # (B, N, n_basis, N_j, N_k)
        # Σ_k as ONE product per atom i: (n_basis·N_j, N_k) @ (N_k, C'), not n_basis broadcast ones
        g = torch.matmul(basis.flatten(2, 3), b).unflatten(2, (self.n_basis, n))  # (B, N, n_basis, N, C')
        t = (a.unsqueeze(2) * g).sum(3)                                  # Σ_j: (B, N, n_basis, C')
        return torch.einsum("bnkc,ck->bnc", t, self.angular.weight) * inv_n.squeeze(-1) ** 2

    def forward(self, h_tilde, u, inv_n):
        """Shape: (B, N, N, C), (B, N, N, 3), (B, 1, 1, 1) -> (B, N, H), (B, N, 3)."""
        h_spa = self.post_norm_mlp(self.scalars(h_tilde, u, inv_n))
        lam = torch.tanh(self.x_mixing(h_tilde))
        v_bar = torch.matmul(u.transpose(-1, -2), lam) * inv_n          # (B, N, 3, C)
        dv = torch.matmul(v_bar, self.v_mixing.weight.squeeze(0))       # Σ_c w_c V̄_ic
        return h_spa, dv
