"""Pure geometry on dense, padded molecules.

Shapes used throughout sake_md (B molecules, N atoms after padding):

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
