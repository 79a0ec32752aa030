"""One SAKE layer (docs/model.md, steps 1-7): edge embedding, semantic attention, a swappable spatial block,
the residual node update and the velocity/position update.

The layer runs on ``PairMasks`` (all pairs: pair axis = N atoms) or a ``NeighbourGraph`` (sparse mode:
pair axis = K neighbour slots); see ``sake_md.graph``. On ``sake_md.engines.lammps_graph.LAMMPSGraph`` (LAMMPS'
pair list) senders run over local and ghost atoms and receivers over local atoms only: ``graph.receivers``
picks the receiving rows (the identity on the other two), and the layer returns h, x for those rows."""

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import distances, unit_vectors
from .graph import MASKED_LOGIT, NeighbourGraph, PairMasks  # noqa: F401  (PairMasks, MASKED_LOGIT: re-exported)
from .modules import ExpNormalRBF, linear, mlp


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

    def edge_features(self, h: torch.Tensor, d: torch.Tensor, graph: PairMasks | NeighbourGraph) -> torch.Tensor:
        """h_ij (step 1). Every concatenation [h_j ‖ h_i ‖ ...] is applied as split matrix products, so
        the per-node parts cost O(N), not O(N²), and come from ONE product with the stacked weights.

        Shape: (B, N, H), (B, N, N|K) -> (B, N, N|K, H).
        """
        H, R = self.hidden, self.radial
        w_in, w_1 = self.filter_in.weight, self.edge_in.weight
        stacked = torch.cat([w_in[:, :H], w_in[:, H:], w_1[:, :H], w_1[:, H:2 * H]])  # (2R + 2H, H)
        f_j, f_i, e_j, e_i = torch.matmul(h, stacked.t()).split([R, R, H, H], dim=-1)
        g = self.rbf(d) * (graph.senders(f_j) + graph.receivers(f_i + self.filter_in.bias).unsqueeze(2))
        e = torch.addcmul(F.linear(g, w_1[:, 2 * H:2 * H + R]), d.unsqueeze(-1), w_1[:, -1])
        e = e + graph.senders(e_j) + graph.receivers(e_i + self.edge_in.bias).unsqueeze(2)
        return self.edge_out(F.silu(e))

    def attention(self, h_ij: torch.Tensor, graph: PairMasks | NeighbourGraph) -> torch.Tensor:
        """Semantic attention a_ij^k, a softmax over j (steps 2-3). Shape: (B, N, N|K, H) -> (B, N, N|K, K)."""
        return graph.attention(F.celu(self.semantic(h_ij), alpha=2.0))

    def forward(self, h, x, v, graph: PairMasks | NeighbourGraph):
        """Shape: h (B, N, H), x (B, N, 3), v (B, N, 3) or None -> h' (B, N, H), x' (B, N, 3), v' or None."""
        r = graph.edge_vectors(x)
        d = distances(r)
        u = unit_vectors(r, d) * graph.pair_weight
        h_ij = self.edge_features(h, d, graph)
        a = self.attention(h_ij, graph)
        # h̃ = a ⊗ h_ij, head-major (index k·H + f): the broadcast's inner loop runs over H, not over
        # K = 4, which makes it and its gradients faster (benchmarks/bench_model.py). The reference flattens
        # f·K + k; the checkpoint format (v2) and the parity loader account for the permutation.
        h_tilde = (a.unsqueeze(-1) * h_ij.unsqueeze(-2)).flatten(-2)  # (B, N, N|K, K·H)
        h_spa, dv = self.spatial(h_tilde, u, graph.inv_n)
        m = torch.matmul(h_ij.transpose(-1, -2), a).flatten(-2)  # Σ_j h̃_ij without re-reading h̃
        h, x = graph.receivers(h), graph.receivers(x)  # a graph whose senders include ghosts updates receivers only
        parts = [h, m] if h_spa is None else [h, m, h_spa]
        h = h + self.node_mlp(torch.cat(parts, -1))
        if dv is None:
            return h, x, v
        if v is not None and self.velocity_mlp is not None:
            dv = torch.addcmul(dv, torch.sigmoid(self.velocity_mlp(h)), v, value=2.0)  # φ_v(h')·v + Δv
        return h, x + dv, dv
