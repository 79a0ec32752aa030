"""Cheap analytic force models in torch, for checking integrators (any ``ForceField`` works in the engine).

Shapes: positions (B, N, 3) -> energy (B,) float64, forces (B, N, 3). Units: eV, Å.
"""

import torch

from sake_md.model import compute_forces


class HarmonicTrap:
    """E = ½ k Σᵢ |xᵢ − x⁰ᵢ|²: independent 3-D oscillators, for which equipartition is exact.

    ``centres`` (B, N, 3) or (N, 3), ``k`` in eV/Å², ``mask`` (B, N) or None.
    """

    def __init__(self, centres: torch.Tensor, k: float, mask: torch.Tensor | None = None):
        self.centres, self.k, self.mask = centres, k, mask

    def __call__(self, positions):
        d2 = (positions - self.centres).square().sum(-1)
        if self.mask is not None:
            d2 = d2 * self.mask
        energy = 0.5 * self.k * d2.sum(-1)
        forces = -self.k * (positions - self.centres)
        if self.mask is not None:
            forces = forces * self.mask[..., None]
        return energy.to(torch.float64), forces


class PairMorse:
    """E = Σ_{i<j} D [(1 − e^{−α(r−r₀)})² − 1] over all pairs: an anharmonic, bound cluster.

    Forces come from ``compute_forces`` (autograd), like the SAKE model's.
    """

    def __init__(self, depth: float = 1.0, alpha: float = 1.5, r0: float = 1.5, mask: torch.Tensor | None = None):
        self.depth, self.alpha, self.r0, self.mask = depth, alpha, r0, mask

    def energy(self, positions):
        B, N, _ = positions.shape
        i, j = torch.triu_indices(N, N, 1, device=positions.device)
        r = (positions[:, i] - positions[:, j]).norm(dim=-1)
        e = self.depth * ((1 - torch.exp(-self.alpha * (r - self.r0))).square() - 1)
        if self.mask is not None:
            e = e * (self.mask[:, i] & self.mask[:, j])
        return e.sum(-1)

    def __call__(self, positions):
        x = positions.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            energy = self.energy(x)
            forces = compute_forces(energy, x)
        return energy.detach().to(torch.float64), forces
