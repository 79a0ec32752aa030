"""Neighbour lists for the sparse mode: matscipy's cell-list search with the real cell and periodic images.

A pair (i, j, S) means r_ij = x_j − x_i + S·cell with |r_ij| < r_c; S is an integer vector of cell
crossings and (i, i, S ≠ 0) is a genuine pair (an atom sees its own images when the cell is short).
Pairs become the padded ``NeighbourTable`` that ``sake_md.graph.NeighbourGraph`` reads.

Non-periodic directions get a tight box around the atoms, wherever they are: the vectors of those
directions are replaced by unit vectors perpendicular to the periodic ones, scaled to the atoms'
extent, and the box's origin is put at the atoms' minimum. (A box from the origin to the atoms, or
one scaled by their distance from it, makes the cell-list search slow for a molecule far from the
origin: MACE had that bug.) Those vectors never enter a shift, since S = 0 along them.

``VerletNeighbours`` reuses a list built with r_c + skin until some atom has moved more than half the
skin (or the cell, the periodicity or the atoms changed) and hands the model only the pairs within r_c:
the network's cost grows with every pair it sees, the search's does not.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, InputError
from .graph import NeighbourTable

__all__ = ["MIN_DISTANCE", "BOX_MARGIN", "Pairs", "check_cell", "search_cell", "neighbour_pairs", "neighbour_table",
           "batch_table", "VerletNeighbours"]

MIN_DISTANCE = 0.1  # Å; closer than this, two atoms are "on top of each other" (H2 is 0.74 Å)
BOX_MARGIN = 1.0  # Å added to the atoms' extent along each non-periodic direction


@dataclass
class Pairs:
    """One structure's pairs. Shapes: i (E,), j (E,) int, shifts (E, 3) float64 S·cell in Å; i is sorted."""

    i: np.ndarray
    j: np.ndarray
    shifts: np.ndarray

    def distances(self, positions: np.ndarray) -> np.ndarray:
        """|x_j − x_i + shift| at ``positions`` (N, 3). Shape: (E,)."""
        r = positions[self.j] - positions[self.i] + self.shifts
        return np.sqrt(np.einsum("ex,ex->e", r, r))

    def select(self, keep: np.ndarray) -> "Pairs":
        return Pairs(self.i[keep], self.j[keep], self.shifts[keep])


def check_cell(cell: np.ndarray, pbc: np.ndarray, label: str = "structure") -> None:
    """The periodic lattice vectors must span a non-zero length, area or volume."""
    periodic = cell[pbc]
    lengths = np.linalg.norm(periodic, axis=1)
    measure = np.sqrt(max(np.linalg.det(periodic @ periodic.T), 0.0))  # length, area or volume
    if not np.isfinite(cell).all() or (lengths < 1e-6).any() or measure < 1e-6 * np.prod(lengths):
        names = "".join("abc"[k] for k in np.flatnonzero(pbc))
        raise InputError(f"{label} has a periodic cell of zero volume: its lattice vectors {names} along the "
                         f"periodic directions (pbc={list(map(bool, pbc))}) are zero or linearly dependent "
                         f"(cell={np.round(cell, 6).tolist()}). Give a cell with linearly independent vectors, "
                         f"or set pbc=False for an isolated structure.")


def search_cell(positions: np.ndarray, cell: np.ndarray | None, pbc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cell and origin for matscipy: periodic vectors as given, a tight box along the others.

    Shape: positions (N, 3), cell (3, 3) or None, pbc (3,) -> cell (3, 3), origin (3,).
    """
    cell = np.zeros((3, 3)) if cell is None else np.array(cell, dtype=np.float64)
    periodic = cell[pbc]
    # unit vectors perpendicular to the periodic ones: the rows of Vᵀ beyond the periodic rank
    free = np.linalg.svd(periodic)[2][len(periodic):] if len(periodic) else np.eye(3)
    origin = np.zeros(3)
    for k, axis in zip(np.flatnonzero(~pbc), free, strict=True):
        along = positions @ axis
        cell[k] = axis * (along.max() - along.min() + BOX_MARGIN)
        origin += axis * (along.min() - 0.5 * BOX_MARGIN)
    return cell, origin


def neighbour_pairs(positions: np.ndarray, cutoff: float, cell: np.ndarray | None = None, pbc=None,
                    label: str = "structure") -> Pairs:
    """All pairs closer than ``cutoff`` (matscipy), with clear errors for a degenerate cell or atoms on
    top of each other. Shape: positions (N, 3) Å, cell (3, 3) rows = lattice vectors, pbc (3,) bool."""
    try:
        from matscipy.neighbours import neighbour_list
    except ImportError as e:
        raise ConfigError(f"the sparse (cutoff) mode needs matscipy: pip install 'sake-md[periodic]' ({e})") from None

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool).reshape(3)
    if pbc.any():
        check_cell(np.asarray(cell, dtype=np.float64), pbc, label)
    box, origin = search_cell(positions, cell, pbc)
    i, j, S, d = neighbour_list("ijSd", positions=positions, cell=box, pbc=pbc, cutoff=float(cutoff),
                                cell_origin=origin)
    if len(d) and d.min() < MIN_DISTANCE:
        k = int(np.argmin(d))
        image = "" if i[k] != j[k] and not S[k].any() else f" (periodic image {S[k].tolist()})"
        raise InputError(f"{label}: atoms {i[k]} and {j[k]}{image} are {d[k]:.3g} Å apart, on top of each other "
                         f"(closer than {MIN_DISTANCE} Å); the structure is broken or its units are not Å")
    order = np.argsort(i, kind="stable")  # matscipy sorts by i; make sure
    i, j, S = i[order], j[order], S[order]
    shifts = S @ box if pbc.any() else np.zeros((len(i), 3))
    return Pairs(i.astype(np.int64), j.astype(np.int64), shifts)


def neighbour_table(pairs: list[Pairs], n_atoms: int, device="cpu") -> NeighbourTable:
    """Pad the pairs of B structures into slots: (B, n_atoms, K), K the largest neighbour count (≥ 1)."""
    counts = [np.bincount(p.i, minlength=n_atoms) for p in pairs]
    K = max(1, max(int(c.max(initial=0)) for c in counts))
    B = len(pairs)
    index = np.broadcast_to(np.arange(n_atoms).reshape(1, -1, 1), (B, n_atoms, K)).copy()  # empty: i itself
    shifts = np.zeros((B, n_atoms, K, 3))
    valid = np.zeros((B, n_atoms, K), dtype=bool)
    for b, (p, c) in enumerate(zip(pairs, counts, strict=True)):
        slot = np.arange(len(p.i)) - (np.cumsum(c) - c)[p.i]  # position of each pair within its atom's run
        index[b, p.i, slot] = p.j
        shifts[b, p.i, slot] = p.shifts
        valid[b, p.i, slot] = True
    return NeighbourTable(torch.from_numpy(index).to(device), torch.from_numpy(shifts).to(device),
                          torch.from_numpy(valid).to(device))


def batch_table(positions: torch.Tensor, mask: torch.Tensor, cutoff: float, cell: torch.Tensor | None = None,
                pbc: torch.Tensor | None = None) -> NeighbourTable:
    """The neighbour table of a padded batch. Shape: positions (B, N, 3), mask (B, N), cell (B, 3, 3), pbc (B, 3)."""
    x = positions.detach().to("cpu", torch.float64).numpy()
    n = mask.sum(-1).cpu().numpy()
    cells = None if cell is None else cell.detach().to("cpu", torch.float64).numpy()
    flags = None if pbc is None else pbc.cpu().numpy()
    label = (lambda b: "structure") if len(x) == 1 else (lambda b: f"structure {b}")
    pairs = [neighbour_pairs(x[b, :n[b]], cutoff, None if cells is None else cells[b],
                             None if flags is None else flags[b], label(b)) for b in range(len(x))]
    return neighbour_table(pairs, x.shape[1], positions.device)


class VerletNeighbours:
    """A neighbour list with a skin for MD: one structure, rebuilt only when needed.

    ``builds`` counts the searches; ``table`` returns the pairs within ``cutoff`` at the given positions.
    """

    def __init__(self, cutoff: float, skin: float = 0.5):
        if skin < 0:
            raise InputError(f"the neighbour-list skin must be ≥ 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self._pairs: Pairs | None = None
        self._key = None
        self._reference: np.ndarray | None = None

    def table(self, numbers, positions: np.ndarray, cell, pbc, device="cpu") -> NeighbourTable:
        """Shape: numbers (N,), positions (N, 3), cell (3, 3), pbc (3,)."""
        positions = np.asarray(positions, dtype=np.float64)
        pbc = np.asarray(pbc, dtype=bool)
        key = (np.asarray(numbers).tobytes(), pbc.tobytes(), np.asarray(cell, dtype=np.float64).tobytes()
               if pbc.any() else b"")
        if self._needs_search(key, positions):
            self._pairs = neighbour_pairs(positions, self.cutoff + self.skin, cell, pbc)
            self._key, self._reference = key, positions.copy()
            self.builds += 1
        pairs = self._pairs
        if self.skin > 0:
            d = pairs.distances(positions)
            if len(d) and d.min() < MIN_DISTANCE:  # the search checked the positions of its build only
                neighbour_pairs(positions, self.cutoff, cell, pbc)  # raises the clear error
            pairs = pairs.select(d < self.cutoff)
        return neighbour_table([pairs], len(positions), device)

    def _needs_search(self, key, positions: np.ndarray) -> bool:
        if self._pairs is None or key != self._key or positions.shape != self._reference.shape:
            return True
        moved = np.sqrt(((positions - self._reference) ** 2).sum(-1)).max(initial=0.0)
        return moved > 0.5 * self.skin
