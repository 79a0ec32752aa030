"""Pure geometry on padded structures: the dense all-pairs graph and the neighbour tables of the
sparse (cutoff) mode.

Shapes used throughout sake_md (B structures, N atoms after padding, K neighbour slots per atom):

=============  ============  =====================================================
name           shape         meaning
=============  ============  =====================================================
species        (B, N)        index into the model's species list (0 at padding)
positions x    (B, N, 3)     Å
mask           (B, N)        True for real atoms
h              (B, N, F)     node features
r, u           (B, N, N, 3)  r_ij = x_j - x_i (row i receives, column j sends)
d              (B, N, N)     regularised distance sqrt(|r_ij|² + 1e-5)
neighbours     (B, N, N)     True where i and j are real and i != j
h̃ (h_tilde)    (B, N, N, C)  attention-weighted edge features, C = K·H, head-major (k·H + f)
index          (B, N, K)     sparse mode: the atom j in slot k of atom i (same structure)
shifts         (B, N, K, 3)  sparse mode: S·cell, the periodic image of j in slot k (Å)
r, u (sparse)  (B, N, K, 3)  r_ik = x_j + shift - x_i: the pair axis holds slots instead of atoms
envelope c     (B, N, K, 1)  sparse mode: smooth cutoff of the input distance, 0 on empty slots
=============  ============  =====================================================
"""

import torch

DIST_EPS = 1e-5  # inside the square root: d_ii ≈ 3.2e-3, never 0
UNIT_EPS = 1e-5  # added to d before dividing, as the reference does


def edge_vectors(x: torch.Tensor) -> torch.Tensor:
    """r_ij = x_j - x_i. Shape: (B, N, 3) -> (B, N, N, 3)."""
    return x.unsqueeze(1) - x.unsqueeze(2)


def distances(r: torch.Tensor) -> torch.Tensor:
    """d_ij = sqrt(|r_ij|² + 1e-5), smooth at r = 0. Shape: (B, N, N, 3) -> (B, N, N)."""
    return torch.sqrt((r * r).sum(-1) + DIST_EPS)


def unit_vectors(r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """u_ij = r_ij / (d_ij + 1e-5); u_ii = 0. Shape: (B, N, N, 3), (B, N, N) -> (B, N, N, 3)."""
    return r / (d + UNIT_EPS).unsqueeze(-1)


def neighbour_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pairs of distinct real atoms. Shape: (B, N) -> (B, N, N)."""
    n = mask.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return mask.unsqueeze(1) & mask.unsqueeze(2) & ~eye


def smooth_cutoff(d: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """Envelope c(d): exactly 1 for d ≤ r_c − w, exactly 0 for d ≥ r_c, and in between the C² polynomial
    1 − t³(10 − 15t + 6t²), t = (d − r_c + w)/w ("smootherstep": c, c' and c'' are continuous).

    Flat at 1 inside r_c − w, so that the sparse model equals the dense one when every pair lies
    there (the spec's 0.5(cos(πd/r_c) + 1) is below 1 at every d > 0). Shape: (...) -> (...).
    """
    t = ((d - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)
