"""SAKE as a LAMMPS ML-IAP unified model (``pair_style mliap unified FILE 0``).

LAMMPS loads the object that ``export_lammps`` pickles (``sake-md export-lammps CKPT -o model.pkl``) and calls
``compute_forces(data)`` once per force evaluation on every MPI rank. ``data`` is the couple's data object
(``src/ML-IAP/mliap_unified_couple.pyx``, numpy buffers; or the Kokkos one, torch/cupy buffers and
``forward_exchange``/``reverse_exchange``). We read ``nlistatoms`` (or ``nlocal``), ``ntotal``, ``elems``,
``pair_i``, ``pair_j``, ``rij``, ``npairs`` and write ``eatoms``, ``energy`` and the pair forces
f_ij = ∂E/∂r_ij with ``update_pair_forces`` (LAMMPS adds f_ij to atom i and subtracts it from atom j,
reverse-communicates ghost forces and tallies the virial from r_ij ⊗ f_ij).

Two modes, chosen at export:

- ``exchange`` (default; needs the Kokkos couple as soon as a rank has ghost atoms): LAMMPS' pairs within
  r_c, ``sake_md.engines.lammps_graph.LAMMPSGraph``, and one exchange of [h ‖ Δx] per layer boundary
  (L − 1 forward exchanges, L − 1 reverse in the backward pass). Exact on any number of ranks.
- ``halo`` (any build, any number of ranks): the ghost features are recomputed instead of exchanged. The
  export sets LAMMPS' pair cutoff to L·r_c, the model's receptive field, so each rank gets every atom its
  energies depend on; it places them by a spanning tree of the pairs (x_j = x_i + r_ij), evaluates the
  ordinary sparse model on that cluster and keeps the local atoms' energies. ∂E/∂r goes to the tree's
  pairs, which gives exact forces and virial. The cost is the halo: LAMMPS lists ~(L·r_c)³ρ pairs per atom
  and the network runs on local + halo atoms (a 6-layer, 5 Å model: 30 Å of halo).

Energies: float64 out, the model's dtype inside. The per-structure constant ``energy_shift`` of the
checkpoint's normalisation is left out (LAMMPS cannot know the system's atom count on one rank; it
changes no force); atomic reference energies are included.
"""

import pickle
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import checkpoint_dict, potential_from_dict
from ..errors import ConfigError, InputError
from ..inference import inference_potential
from ..model import SAKEPotential
from ..neighbours import neighbour_pairs, neighbour_table
from .lammps_graph import LAMMPSGraph, PairSlots, run_backbone

__all__ = ["SAKEMLIAP", "export_lammps", "halo_positions", "cluster_energies", "MODES"]

MODES = ("exchange", "halo")
CUTOFF_TOLERANCE = 1e-6  # Å: LAMMPS lists pairs strictly inside its cutoff


class IdentityExchange:
    """A rank without ghost atoms (one rank, no periodic images): nothing to exchange."""

    @staticmethod
    def forward_exchange(src, dst, width):
        dst.copy_(src)

    @staticmethod
    def reverse_exchange(src, dst, width):
        dst.copy_(src)


class SAKEMLIAP:
    """The ML-IAP unified model (same attributes and methods as LAMMPS' ``MLIAPUnified``).

    ``potential``: a checkpoint path or ``SAKEPotential``; ``cutoff`` (Å) for a dense model (as
    ``SAKECalculator(cutoff=)``); ``mode`` "exchange" or "halo" (module docstring); ``dtype`` the model's
    dtype inside (default: the checkpoint's); the device follows LAMMPS' buffers (cupy: the GPU).
    """

    def __init__(self, potential, cutoff: float | None = None, mode: str = "exchange", dtype=None):
        if mode not in MODES:
            raise ConfigError(f"unknown ML-IAP mode {mode!r}; known: {', '.join(MODES)}")
        self.potential = inference_potential(potential, "cpu", dtype, cutoff)
        if self.potential.cutoff is None:
            raise ConfigError("LAMMPS needs a cutoff: this checkpoint is dense (all pairs). Give one "
                              "(sake-md export-lammps CKPT --cutoff 6.0), as SAKECalculator(cutoff=) does.")
        from ase.data import chemical_symbols

        self.mode = mode
        self.interface = None
        self.element_types = [chemical_symbols[z] for z in self.potential.atomic_numbers]
        self.ndescriptors = 1
        self.nparams = 1
        self.cutoff = self.pair_cutoff  # read by newer Kokkos couples for cutmax
        self.rcutfac = 0.5 * self.pair_cutoff  # LAMMPS' pair cutoff is 2 · rcutfac (mliap_unified.cpp)

    @property
    def layers(self) -> int:
        return len(self.potential.backbone.layers)

    @property
    def pair_cutoff(self) -> float:
        """The cutoff of LAMMPS' pair list: the model's r_c, or the receptive field L·r_c in halo mode."""
        r_c = self.potential.cutoff
        return r_c if self.mode == "exchange" else self.layers * r_c

    # --- pickling: plain data (the checkpoint's contents), the module rebuilt on loading ---------------

    def __getstate__(self):
        return {"checkpoint": checkpoint_dict(self.potential), "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(potential_from_dict(state["checkpoint"], "LAMMPS model"), None, state["mode"])

    # --- MLIAPUnified ------------------------------------------------------------------------------------

    def compute_descriptors(self, data):
        pass

    def compute_gradients(self, data):
        pass

    def compute_forces(self, data):
        """One force evaluation of this rank (module docstring). Every rank runs the same exchanges."""
        n, total = local_count(data), int(data.ntotal)
        device = torch.as_tensor(data.elems).device
        if device != self.potential.device:
            self.potential = self.potential.to(device)
        species = self.species(data, total)
        pair_i, pair_j, rij = pair_arrays(data, device)
        self.check_cutoff(rij)  # in float64: a float32 length may round past the cutoff
        rij = rij.to(self.potential.dtype)
        if self.mode == "halo":
            atomic, fij = self.halo_energies(species, n, pair_i, pair_j, rij)
        else:
            atomic, fij = self.exchange_energies(data, species, n, total, pair_i, pair_j, rij)
        energies = atomic.detach().to(torch.float64) + self.potential._refs.to(device)[species[:n]]
        write_results(data, energies, fij.detach().to(torch.float64).contiguous())

    def species(self, data, total: int) -> torch.Tensor:
        elems = torch.as_tensor(data.elems)[:total].to(torch.long)
        known = len(self.element_types)
        if len(elems) and (int(elems.min()) < 0 or int(elems.max()) >= known):
            raise InputError(f"LAMMPS gave element index {int(elems.max())} or {int(elems.min())}; this model knows "
                             f"{known} elements ({' '.join(self.element_types)}): map every atom type to one of them "
                             f"in pair_coeff * * {' '.join(self.element_types)}")
        return elems

    def check_cutoff(self, rij: torch.Tensor):
        if len(rij):
            longest = float(rij.detach().norm(dim=1).max())
            if longest > self.pair_cutoff + CUTOFF_TOLERANCE:
                raise ConfigError(f"LAMMPS lists pairs up to {longest:.4g} Å, but this model's pair cutoff is "
                                  f"{self.pair_cutoff:g} Å ({self.mode} mode, r_c = {self.potential.cutoff:g} Å): "
                                  f"the exported rcutfac ({self.rcutfac:g}) was changed, or the file is for another "
                                  f"model")

    def exchange_energies(self, data, species, n, total, pair_i, pair_j, rij):
        """Scaled per-atom energies (n,) and ∂E/∂r_ij (P, 3), with the per-layer ghost exchange."""
        comm = data if hasattr(data, "forward_exchange") else None
        if comm is None:
            if total > n:
                raise ConfigError(
                    f"this rank has {total - n} ghost atoms and the LAMMPS build offers no forward_exchange: the "
                    f"plain ML-IAP couple (or a Kokkos couple too old to have it) cannot pass SAKE's node features "
                    f"between layers, so this file runs there on one rank without periodic images only. Use a "
                    f"recent LAMMPS built with KOKKOS (-D PKG_KOKKOS=yes) and run with '-k on -sf kk', or export "
                    f"with --mode halo (exact on any build and any number of ranks, at the cost of a halo of "
                    f"{self.layers} × r_c).")
            comm = IdentityExchange()
        rij = rij.requires_grad_(True)
        with torch.enable_grad():
            slots = PairSlots.build(pair_i, pair_j, n, rij.dtype)
            graph = LAMMPSGraph.build(slots, rij, self.potential.cutoff, self.potential.config.cutoff_width)
            atomic = self.potential.energy_scale * run_backbone(self.potential.backbone, species, graph, comm)
            # the backward pass runs the reverse exchanges: every rank takes it, with or without atoms
            # (never skip it for a rank whose energy looks constant: the other ranks wait for its exchanges)
            (fij,) = torch.autograd.grad(atomic.sum(), [rij], allow_unused=True)
        return atomic, torch.zeros_like(rij) if fij is None else fij

    def halo_energies(self, species, n, pair_i, pair_j, rij):
        """Scaled per-atom energies (n,) and ∂E/∂r_ij (P, 3) from the cluster of local + halo atoms."""
        rij = rij.requires_grad_(True)
        with torch.enable_grad():
            keep, positions = halo_positions(pair_i, pair_j, rij, n, len(species))
            atomic = cluster_energies(self.potential, species[keep], positions, n)
        return atomic, gradient(atomic.sum(), rij)


def gradient(energy: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """∂energy/∂wrt, zeros where the energy does not depend on it (no atoms, no pairs)."""
    if not energy.requires_grad:
        return torch.zeros_like(wrt)
    (grad,) = torch.autograd.grad(energy, [wrt], allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad


def local_count(data) -> int:
    """Local atoms: ``nlocal`` where the couple has it (Kokkos), else ``nlistatoms``."""
    n = int(data.nlistatoms)
    nlocal = getattr(data, "nlocal", None)
    if nlocal is not None and int(nlocal) != n:
        raise InputError(f"{int(nlocal) - n} local atoms are left out of the ML-IAP list (NULL types in pair_coeff): "
                         f"not supported with SAKE; map every atom type to an element")
    return n


def pair_arrays(data, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pair_i, pair_j (P,) long and r_ij (P, 3) float64, a copy (never LAMMPS' buffer)."""
    dtype = torch.float64
    P = int(data.npairs)
    if P == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=dtype, device=device)
    pair_i = torch.as_tensor(data.pair_i)[:P].to(device=device, dtype=torch.long)
    pair_j = torch.as_tensor(data.pair_j)[:P].to(device=device, dtype=torch.long)
    rij = torch.as_tensor(data.rij)[:P].to(device=device, dtype=dtype, copy=True)
    return pair_i, pair_j, rij


def write_results(data, energies: torch.Tensor, fij: torch.Tensor):
    """eatoms, energy and pair forces, float64. The plain couple's ``eatoms`` is write-only (assign), the
    Kokkos couple's read-only (a view to fill). Shape: energies (n,), fij (P, 3)."""
    try:
        view = data.eatoms
    except AttributeError:
        data.eatoms = energies.cpu().numpy()
    else:
        if view is not None:
            if isinstance(view, np.ndarray):
                view[:] = energies.cpu().numpy()
            else:
                torch.as_tensor(view).copy_(energies)
    data.energy = float(energies.sum())
    if len(fij):  # the couple indexes element 0: never hand it an empty buffer
        data.update_pair_forces(fij.cpu().numpy() if fij.device.type == "cpu" else fij)


def halo_positions(pair_i, pair_j, rij, n: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the local atoms and of every atom some pair reaches, from a spanning tree of the pairs:
    x_j = x_i + r_ij along the tree (each connected part has its own origin; parts do not interact).

    Differentiable in ``rij``: ∂/∂r flows to the tree's pairs only. Returns the kept atoms' rows (locals
    first, 0..n-1) and their positions. Shape: pair_i, pair_j (P,), rij (P, 3) -> keep (M,), positions (M, 3).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    i, j = pair_i.cpu().numpy(), pair_j.cpu().numpy()
    reached = np.zeros(total, dtype=bool)
    reached[:n] = True
    reached[j] = True
    keep = np.flatnonzero(reached)  # locals (0..n-1) first, then the ghosts in their order
    row = np.full(total, -1)
    row[keep] = np.arange(len(keep))
    a, b = row[i], row[j]
    M = len(keep)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(M, M)).tocsr()
    parts, label = connected_components(graph, directed=False)
    parent = np.full(M, -1)
    for part in range(parts):
        root = int(np.flatnonzero(label == part)[0])
        _, pred = breadth_first_order(graph, root, directed=False, return_predecessors=True)
        members = label == part
        parent[members] = pred[members]
    # the pair behind each tree edge parent -> child, and its sign (r_ij points from i to j)
    key = a * M + b
    order = np.argsort(key)
    child = np.flatnonzero(parent >= 0)
    forward = search(key, order, parent[child] * M + child)
    backward = search(key, order, child * M + parent[child])
    use_forward = forward >= 0
    edge = np.where(use_forward, forward, backward)
    sign = torch.as_tensor(np.where(use_forward, 1.0, -1.0), dtype=rij.dtype, device=rij.device).unsqueeze(1)
    depth = tree_depth(parent)
    x = rij.new_zeros(M, 3)
    edge_of = np.full(M, -1)
    edge_of[child] = np.arange(len(child))
    for level in range(1, int(depth.max(initial=0)) + 1):
        nodes = np.flatnonzero(depth == level)
        e = edge_of[nodes]
        step = sign[e] * rij[torch.as_tensor(edge[e], device=rij.device)]
        x = x.index_copy(0, torch.as_tensor(nodes, device=rij.device),
                         x[torch.as_tensor(parent[nodes], device=rij.device)] + step)
    return torch.as_tensor(keep, device=rij.device), x


def search(keys: np.ndarray, order: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The index into ``keys`` (sorted by ``order``) of each wanted key, or -1."""
    if len(keys) == 0:
        return np.full(len(wanted), -1)
    sorted_keys = keys[order]
    at = np.clip(np.searchsorted(sorted_keys, wanted), 0, len(keys) - 1)
    return np.where(sorted_keys[at] == wanted, order[at], -1)


def tree_depth(parent: np.ndarray) -> np.ndarray:
    """Hops from each node to its part's root (parent -1); iterations = the tree's height. Shape: (M,) -> (M,)."""
    depth = np.zeros(len(parent), dtype=np.int64)
    up = parent.copy()
    while (up >= 0).any():
        has = up >= 0
        depth[has] += 1
        up[has] = parent[up[has]]
    return depth


def cluster_energies(potential: SAKEPotential, species: torch.Tensor, positions: torch.Tensor,
                     n: int) -> torch.Tensor:
    """Scaled per-atom energies of the first ``n`` atoms of an open cluster (no cell), the sparse model on a
    fresh neighbour list. Shape: species (M,), positions (M, 3) -> (n,)."""
    if n == 0:  # a rank without atoms (no exchange in this path: returning early is safe)
        return positions[:0, 0]
    pairs = neighbour_pairs(positions.detach().cpu().numpy().astype(np.float64), potential.cutoff)
    table = neighbour_table([pairs], len(species), positions.device)
    mask = torch.ones(1, len(species), dtype=torch.bool, device=positions.device)
    return potential(species.unsqueeze(0), positions.unsqueeze(0), mask, table)[0, :n]


def export_lammps(checkpoint, out, cutoff: float | None = None, mode: str = "exchange", dtype=None) -> dict:
    """Write the ML-IAP model for ``pair_style mliap unified OUT 0``; returns what LAMMPS needs to know.

    ``out`` must not end in .pt/.pth: LAMMPS opens those with ``torch.load``, which refuses pickled objects
    by default since torch 2.6; any other name is read with ``pickle.load``.
    """
    out = Path(out)
    if out.suffix in (".pt", ".pth"):
        raise ConfigError(f"{out}: LAMMPS reads .pt/.pth files with torch.load (weights only since torch 2.6), "
                          f"which cannot rebuild the model; name the file e.g. {out.with_suffix('.pkl').name}")
    model = SAKEMLIAP(checkpoint, cutoff, mode, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(model, f)
    tmp.replace(out)
    return {"file": str(out), "mode": mode, "elements": list(model.element_types), "cutoff": model.potential.cutoff,
            "pair_cutoff": model.pair_cutoff, "layers": model.layers, "dtype": str(model.potential.dtype),
            "energy_shift_left_out": model.potential.energy_shift}

