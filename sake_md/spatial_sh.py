"""``sake-sh``: spatial attention with the l = 1 vectors replaced by spherical harmonics l = 1..L.

SAKE's invariant |(1/N) Σ_j λ_ijc u_ij|² is a pair sum of λ λ P_1(cos θ_jik). Summing spherical
harmonics instead gives every Legendre order up to L (addition theorem)::

    |Σ_j λ_j Y^l(u_j)|² = Σ_jk λ_j λ_k P_l(u_j · u_k)    (e3nn's "norm" normalisation, |u| = 1)

Choices, and why:

- Harmonics are e3nn's real ``spherical_harmonics`` with ``normalization="norm"`` (|Y^l(û)| = 1),
  so the constant in the identity above is exactly 1 and Y^1(u) = u in (x, y, z) order: with L = 1
  this block is SAKE's spatial attention, parameter for parameter. ("component" would scale order l
  by 2l + 1, "integral" by (2l + 1)/4π.)
- ``normalize=False`` on the layer's u_ij: e3nn's harmonics are homogeneous polynomials, so the zero
  u of the diagonal and of padded pairs gives exactly Y = 0 (no mask, no 0/0), and l = 1 sees the
  same u as SAKE. Since |u_ij| = |r|/(d + 1e-5) < 1, order l carries that factor to the power l:
  a smooth relative change of about l·(1e-5/r + 5e-6/r²) (r in Å), 1.5e-5·l at 1 Å.
- One coefficient map λ = tanh(W_x h̃) is shared by all orders (default). A separate C×C map per
  order (``lambda_per_order=True``) adds (L − 1)·C² parameters per layer (131,072 for C = 256,
  L = 3) and multiplies the dominant per-edge cost by L; sharing lets the post MLP's first layer
  combine orders into a learned angular function Σ_l w_lc P_l(cos θ) per channel for one C×C map.
  Either way the post MLP reads L·C invariants, (L − 1)·C·H more weights than SAKE's (32,768 per
  layer for the MD17 configuration).
"""

import torch
from torch import nn

from .errors import ConfigError
from .modules import linear, mlp

o3 = None  # e3nn.o3, imported by the first block built: only sake-sh needs e3nn (pip install 'sake-md[sh]')


def require_e3nn():
    global o3
    if o3 is None:
        try:
            from e3nn import o3 as module
        except ImportError as e:
            raise ConfigError(f"the sake-sh variant needs e3nn: pip install 'sake-md[sh]' ({e})") from None
        o3 = module
    return o3


def harmonic_slices(lmax: int) -> list[slice]:
    """Where order l = 1..lmax sits in e3nn's concatenated harmonics (l = 0 left out)."""
    return [slice(l * l - 1, (l + 1) * (l + 1) - 1) for l in range(1, lmax + 1)]


class SphericalHarmonicAttention(nn.Module):
    """V̄^l_ic = (1/N) Σ_j λ^l_ijc Y^l(u_ij); h^spa = MLP([|V̄^1_i|² ‖ ... ‖ |V̄^L_i|²]); Δv_i = Σ_c w_c V̄^1_ic.

    Parameter names match ``SpatialAttention`` so that, with lmax = 1, its weights load unchanged.
    """

    moves_atoms = True
    h_tilde_maps = ("x_mixing",)

    def __init__(self, hidden: int, coefficients: int, lmax: int = 3, lambda_per_order: bool = False):
        super().__init__()
        if not isinstance(lmax, int) or lmax < 1:
            raise ConfigError(f"sake-sh needs an integer lmax >= 1 (1 is SAKE's own l = 1 vectors), got {lmax!r}")
        require_e3nn()
        self.lmax, self.lambda_per_order = lmax, bool(lambda_per_order)
        self.slices = harmonic_slices(lmax)
        self.out_features = hidden
        n_maps = lmax if self.lambda_per_order else 1
        self.x_mixing = linear(coefficients, n_maps * coefficients, bias=False)
        self.post_norm_mlp = mlp(lmax * coefficients, hidden, hidden, last_activation=True)
        self.v_mixing = linear(coefficients, 1, bias=False)

    def combine(self, h_tilde: torch.Tensor, u: torch.Tensor, inv_n: torch.Tensor) -> list[torch.Tensor]:
        """V̄^l for l = 1..L, one batched matrix product over j (Yᵀλ, which keeps λ's gradient in λ's
        layout). Shape: (B, N, N, C), (B, N, N, 3), (B, 1, 1, 1) -> L tensors (B, N, 2l + 1, C)."""
        y = o3.spherical_harmonics(list(range(1, self.lmax + 1)), u, normalize=False, normalization="norm")
        y = y.transpose(-1, -2)  # (B, N, L² + 2L, N)
        lam = torch.tanh(self.x_mixing(h_tilde))  # (B, N, N, L'·C)
        if not self.lambda_per_order:
            v_bar = torch.matmul(y, lam) * inv_n  # all orders in one product
            return [v_bar[..., s, :] for s in self.slices]
        lams = lam.chunk(self.lmax, dim=-1)
        return [torch.matmul(y[..., s, :], lam_l) * inv_n for lam_l, s in zip(lams, self.slices, strict=True)]

    def invariants(self, v_bars: list[torch.Tensor]) -> torch.Tensor:
        """|V̄^l_ic|² concatenated over l (order-major). Shape: L × (B, N, 2l + 1, C) -> (B, N, L·C)."""
        return torch.cat([(v * v).sum(-2) for v in v_bars], dim=-1)

    def forward(self, h_tilde, u, inv_n):
        """Shape: (B, N, N, C), (B, N, N, 3), (B, 1, 1, 1) -> (B, N, H), (B, N, 3)."""
        v_bars = self.combine(h_tilde, u, inv_n)
        h_spa = self.post_norm_mlp(self.invariants(v_bars))
        dv = torch.matmul(v_bars[0], self.v_mixing.weight.squeeze(0))  # Y^1(u) = u: SAKE's Σ_c w_c V̄_ic
        return h_spa, dv
