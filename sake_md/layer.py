"""One SAKE layer (spec §1-§7): edge embedding, semantic attention, a swappable spatial block,
the residual node update and the velocity/position update."""

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import distances, edge_vectors, unit_vectors
from .modules import ExpNormalRBF, linear, mlp

MASKED_LOGIT = -1e5  # the reference subtracts 1e5 on the diagonal; exp() of it underflows to 0


class SAKELayer(nn.Module):
    """(h, x, v) -> (h', x', v').

    ``spatial`` is a block from ``sake_md.spatial``; ``velocity_input`` is False for the first
    layer, which has no incoming velocity and therefore no φ_v parameters.
    """

    def __init__(self, hidden: int, heads: int, spatial: nn.Module, radial: int = 50, d_up: float = 5.0,
                 velocity_input: bool = True):
        super().__init__()
        self.hidden, self.heads, self.radial = hidden, heads, radial
        self.rbf = ExpNormalRBF(radial, d_up)
        self.filter_in = linear(2 * hidden, radial)               # W_in on [h_j ‖ h_i]
        self.edge_in = linear(2 * hidden + radial + 1, hidden)    # W_1 on [h_j ‖ h_i ‖ g ‖ d]
        self.edge_out = linear(hidden, hidden)                    # W_2
        self.semantic = linear(hidden, heads)
        self.spatial = spatial
        self.node_mlp = mlp(hidden + hidden * heads + spatial.out_features, hidden, hidden, last_activation=True)
        self.velocity_mlp = None
        if spatial.moves_atoms and velocity_input:
            self.velocity_mlp = mlp(hidden, hidden, 1, last_activation=False, bias_out=False)

    def edge_features(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """h_ij (§1). The concatenations [h_j ‖ h_i ‖ ...] are applied as split matrix products,
        so the per-node parts cost O(N) instead of O(N²).

        Shape: (B, N, H), (B, N, N) -> (B, N, N, H).
        """
        H, R = self.hidden, self.radial
        w_in, w_1 = self.filter_in.weight, self.edge_in.weight
        f_j = F.linear(h, w_in[:, :H])
        f_i = F.linear(h, w_in[:, H:], self.filter_in.bias)
        g = self.rbf(d) * (f_j.unsqueeze(1) + f_i.unsqueeze(2))
        e_j = F.linear(h, w_1[:, :H])
        e_i = F.linear(h, w_1[:, H:2 * H], self.edge_in.bias)
        e = F.linear(g, w_1[:, 2 * H:2 * H + R]) + d.unsqueeze(-1) * w_1[:, -1]
        e = e + e_j.unsqueeze(1) + e_i.unsqueeze(2)
        return self.edge_out(F.silu(e))

    def attention(self, h_ij: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Semantic attention a_ij^k, a softmax over j (§2-§3). Shape: (B, N, N, H) -> (B, N, N, K)."""
        logits = F.celu(self.semantic(h_ij), alpha=2.0)
        logits = logits.masked_fill(~neighbours.unsqueeze(-1), MASKED_LOGIT)
        return torch.softmax(logits, dim=2)

    def forward(self, h, x, v, neighbours, inv_n):
        """Shape: h (B, N, H), x (B, N, 3), v (B, N, 3) or None, neighbours (B, N, N),
        inv_n (B, 1, 1, 1) -> h' (B, N, H), x' (B, N, 3), v' (B, N, 3) or None."""
        r = edge_vectors(x)
        d = distances(r)
        u = unit_vectors(r, d) * neighbours.unsqueeze(-1)
        h_ij = self.edge_features(h, d)
        a = self.attention(h_ij, neighbours)
        h_tilde = (h_ij.unsqueeze(-1) * a.unsqueeze(-2)).flatten(-2)  # (B, N, N, H·K), head fastest
        h_spa, dv = self.spatial(h_tilde, u, inv_n)
        m = torch.matmul(h_ij.transpose(-1, -2), a).flatten(-2)  # Σ_j h̃_ij without re-reading h̃
        parts = [h, m] + ([h_spa] if h_spa is not None else [])
        h = h + self.node_mlp(torch.cat(parts, -1))
        if dv is None:
            return h, x, v
        if v is None or self.velocity_mlp is None:
            v = dv
        else:
            v = 2.0 * torch.sigmoid(self.velocity_mlp(h)) * v + dv
        return h, x + v, v
