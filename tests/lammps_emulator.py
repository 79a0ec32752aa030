"""An emulated LAMMPS for the ML-IAP unified interface: a periodic cell cut into ranks (slabs along the first
lattice vector), each rank's local and ghost atoms and LAMMPS-style pair list, fakes of both couples' data
objects (attribute names as in ``src/ML-IAP/mliap_unified_couple.pyx`` and the Kokkos couple), and ranks
run in threads that exchange ghost rows in lockstep through barriers, as MPI ranks do.

What LAMMPS does after ``compute_forces`` is done here too: pair forces applied (f_i += f_ij, f_j −= f_ij),
ghost forces folded onto their owners, the virial W = Σ r_ij ⊗ f_ij summed over ranks.
"""

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

__all__ = ["RankLayout", "decompose", "ThreadComm", "PlainData", "KokkosData", "run_ranks", "Result"]


@dataclass
class RankLayout:
    """One rank's atoms. Shapes: atom (T,) the global atom of each row (locals first), owner_rank,
    owner_row (T,) where each row's atom lives; pair_i, pair_j (P,) rows; rij (P, 3); elems (T,)."""

    n: int
    atom: np.ndarray
    owner_rank: np.ndarray
    owner_row: np.ndarray
    elems: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    rij: np.ndarray


def decompose(atoms: Atoms, ranks: int, pair_cutoff: float, ghost_cutoff: float, species: dict) -> list[RankLayout]:
    """Slabs of the cell along a (fractional coordinate of the wrapped positions); positions as given (no
    wrapping: LAMMPS' atoms may sit outside the box between re-neighbourings). Ghosts: every periodic image
    or other rank's atom within ``ghost_cutoff`` of a local atom. ``species`` maps Z to the element index."""
    from matscipy.neighbours import neighbour_list

    frac = atoms.cell.scaled_positions(atoms.positions) % 1.0
    rank_of = np.minimum((frac[:, 0] * ranks).astype(int), ranks - 1)
    row_of = np.zeros(len(atoms), dtype=int)
    for r in range(ranks):
        row_of[rank_of == r] = np.arange(int((rank_of == r).sum()))
    gi, gj, gS = neighbour_list("ijS", atoms, ghost_cutoff)
    pi, pj, pS, pD = neighbour_list("ijSD", atoms, pair_cutoff)
    elems = np.array([species[int(z)] for z in atoms.numbers], dtype=np.int32)
    layouts = []
    for r in range(ranks):
        local = np.flatnonzero(rank_of == r)
        n = len(local)
        # ghosts: the (atom, image) pairs seen from this rank's atoms that are not its own atoms
        sel = (rank_of[gi] == r) & ~((gS == 0).all(1) & (rank_of[gj] == r))
        ghost_keys = np.unique(image_key(gj[sel], gS[sel]))
        ghost_atom = ghost_keys // IMAGES ** 3
        keep = rank_of[pi] == r
        i, j, S = pi[keep], pj[keep], pS[keep]
        own = (S == 0).all(1) & (rank_of[j] == r)
        pair_j = np.where(own, row_of[j], n + np.searchsorted(ghost_keys, image_key(j, S)))
        order = np.argsort(row_of[i], kind="stable")  # LAMMPS lists pairs by i
        atom = np.concatenate([local, ghost_atom]).astype(int)
        layouts.append(RankLayout(n, atom, rank_of[atom], row_of[atom], elems[atom],
                                  row_of[i][order].astype(np.int32), pair_j[order].astype(np.int32),
                                  np.ascontiguousarray(pD[keep][order], dtype=np.float64)))
    return layouts


IMAGES = 201  # image indices -100..100 per direction in a key


def image_key(atom: np.ndarray, S: np.ndarray) -> np.ndarray:
    """One integer per (atom, image S). Shape: (P,), (P, 3) -> (P,)."""
    S = np.asarray(S, dtype=np.int64) + IMAGES // 2
    return ((np.asarray(atom, dtype=np.int64) * IMAGES + S[:, 0]) * IMAGES + S[:, 1]) * IMAGES + S[:, 2]


class ThreadComm:
    """Forward and reverse exchange of ghost rows between ranks running in threads, in lockstep (a barrier
    before reading and one after, as a blocking MPI exchange). Counts calls and values sent per rank."""

    def __init__(self, layouts: list[RankLayout], timeout: float = 120.0):
        self.layouts = layouts
        self.barrier = threading.Barrier(len(layouts), timeout=timeout)
        self.boxes = [None] * len(layouts)
        self.calls = [0] * len(layouts)
        self.values = [0] * len(layouts)

    def forward(self, rank: int, src, dst, width: int):
        lay = self.layouts[rank]
        n = lay.n
        self.boxes[rank] = src[:n].clone()
        self.barrier.wait()
        dst[:n] = src[:n]
        for q in range(len(self.layouts)):
            ghost = np.flatnonzero(lay.owner_rank[n:] == q)
            if len(ghost):
                dst[n + ghost] = self.boxes[q][lay.owner_row[n + ghost]]
        self.calls[rank] += 1
        self.values[rank] += (len(lay.atom) - n) * width
        self.barrier.wait()

    def reverse(self, rank: int, src, dst, width: int):
        lay = self.layouts[rank]
        n = lay.n
        self.boxes[rank] = src[n:].clone()
        self.barrier.wait()
        acc = src[:n].clone()
        for q, other in enumerate(self.layouts):
            mine = np.flatnonzero(other.owner_rank[other.n:] == rank)
            if len(mine):
                index = torch.as_tensor(other.owner_row[other.n + mine], device=acc.device)
                acc.index_add_(0, index, self.boxes[q][mine])
        dst[:n] = acc
        dst[n:] = 0
        self.calls[rank] += 1
        self.values[rank] += (len(lay.atom) - n) * width
        self.barrier.wait()


class PlainData:
    """The plain couple's data: numpy buffers, no exchange, ``eatoms`` write-only, no ``nlocal``."""

    def __init__(self, layout: RankLayout):
        self.layout = layout
        self.nlistatoms = layout.n
        self.ntotal = len(layout.atom)
        self.elems = layout.elems
        self.npairs = len(layout.pair_i)
        self.pair_i, self.pair_j, self.jatoms = layout.pair_i, layout.pair_j, layout.pair_j
        self.rij = layout.rij.copy()
        self.eflag = self.vflag = 1
        self.energy = None
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))
        self._eatoms = None

    def _set_eatoms(self, value):
        self._eatoms = np.array(value, dtype=np.float64)

    eatoms = property(fget=None, fset=_set_eatoms)

    def written_energies(self) -> np.ndarray:
        return self._eatoms

    def update_pair_forces(self, fij):
        fij = np.asarray(fij, dtype=np.float64)
        assert fij.shape == (self.npairs, 3) and fij.flags.c_contiguous
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial += self.rij.T @ fij  # Σ r_ij ⊗ f_ij


class KokkosData(PlainData):
    """The Kokkos couple's data on the host: ``nlocal``, a readable ``eatoms`` buffer, the exchanges."""

    def __init__(self, layout: RankLayout, comm: ThreadComm | None = None, rank: int = 0):
        super().__init__(layout)
        self.nlocal = layout.n
        self.comm, self.rank = comm, rank
        self._buffer = np.zeros(layout.n)

    eatoms = property(fget=lambda self: self._buffer)

    def written_energies(self) -> np.ndarray:
        return self._buffer

    def forward_exchange(self, src, dst, width):
        assert src.is_contiguous() and dst.is_contiguous() and src.shape == (self.ntotal, width)
        self.comm.forward(self.rank, src, dst, width)

    def reverse_exchange(self, src, dst, width):
        assert src.is_contiguous() and dst.is_contiguous() and src.shape == (self.ntotal, width)
        self.comm.reverse(self.rank, src, dst, width)


@dataclass
class Result:
    """What LAMMPS would report: energy (float), per-atom energies (N,), forces (N, 3), virial (3, 3)."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    exchanges: list = field(default_factory=list)
    values: list = field(default_factory=list)


def run_ranks(model, layouts: list[RankLayout], natoms: int, kokkos: bool = True) -> Result:
    """Every rank's ``compute_forces`` in its own thread (one rank: in this thread), then LAMMPS' sums."""
    comm = ThreadComm(layouts) if kokkos else None
    datas = [KokkosData(lay, comm, r) if kokkos else PlainData(lay) for r, lay in enumerate(layouts)]
    errors = []

    def work(data):
        try:
            model.compute_forces(data)
        except BaseException as e:  # let the other ranks fail instead of waiting at the barrier
            errors.append(e)
            if comm is not None:
                comm.barrier.abort()

    if len(datas) == 1:
        work(datas[0])
    else:
        threads = [threading.Thread(target=work, args=(d,)) for d in datas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    energies, forces, virial = np.zeros(natoms), np.zeros((natoms, 3)), np.zeros((3, 3))
    for d in datas:
        lay = d.layout
        energies[lay.atom[:lay.n]] = d.written_energies()
        np.add.at(forces, lay.atom, d.f)  # ghost forces folded onto their owners
        virial += d.virial
    return Result(sum(d.energy for d in datas), energies, forces, virial,
                  comm.calls if comm else [], comm.values if comm else [])
