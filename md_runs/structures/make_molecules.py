"""Build the named molecules that ase.build.molecule lacks (``sake_md/molecules/*.xyz``), from standard bond
lengths and angles, and relax each with the study's potential of that molecule.

    OMP_NUM_THREADS=1 python md_runs/structures/make_molecules.py [--check]   # --check: relax, print, write nothing

Internal coordinates (Å, degrees) are typical gas-phase values: C-H 1.08-1.11, C=O 1.20-1.21, aromatic C-C 1.39,
C-C 1.49-1.51, O-H 0.97. The start gets a seeded 0.02 Å nudge so that BFGS does not stay on a saddle that the
start's symmetry would keep it on.

Malonaldehyde is propanedial, OHC-CH2-CHO, not its H-bonded enol (3-hydroxy-2-propenal): the study's four
malonaldehyde potentials (sake, sake-dot, sake-sh, sake-no-spatial) agree on relaxed propanedial (energies within
3 meV, force std 0.02 eV/Å) and not on a planar enol built from standard values (C=O 1.23, C-C 1.45, C=C 1.35,
C-O 1.33, O-H 0.99 Å; energy std 0.31 eV, force std 1.8 eV/Å, forces up to 7.6 eV/Å), which BFGS then turns into
no molecule at all (an O-H on a C=O, a CH with one H): they were never trained on the enol. Relaxed, propanedial
lies 0.58 eV below the checkpoint's energy shift, the mean energy of its training frames (500 K MD).
"""

import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from ase.optimize import BFGS

from sake_md.calculator import SAKECalculator
from sake_md.md.bonds import find_bonds

ROOT = Path(__file__).resolve().parents[2]
FMAX = 0.01  # eV/Å


def place(a, b, c, r, angle, dihedral):
    """The point d with |cd| = r, angle b-c-d and dihedral a-b-c-d (degrees): the z-matrix step."""
    a, b, c = map(np.asarray, (a, b, c))
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    theta, phi = np.radians(angle), np.radians(dihedral)
    local = r * np.array([-np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])
    return c + local @ np.array([bc, np.cross(n, bc), n])


def malonaldehyde() -> Atoms:
    """Propanedial, OHC-CH2-CHO: the form of rMD17's malonaldehyde, for which the study's potentials were trained
    (see the module docstring); the C=O bonds twisted about 100° out of the C-C-C plane, where it relaxes lowest."""
    c1, c0 = np.zeros(3), np.array([1.51, 0.0, 0.0])
    c2 = place([0.0, 1.0, 0.0], c0, c1, 1.51, 112, 0)  # sp3 CH2: C-C-C 112°
    o0, h0 = place(c2, c1, c0, 1.21, 124, 100), place(c2, c1, c0, 1.11, 115, -80)
    o2, h2 = place(c0, c1, c2, 1.21, 124, 100), place(c0, c1, c2, 1.11, 115, -80)
    ha, hb = place(c0, c2, c1, 1.09, 109.5, 120), place(c0, c2, c1, 1.09, 109.5, -120)
    return Atoms("C3O2H4", [c0, c1, c2, o0, o2, h0, h2, ha, hb])


def aspirin() -> Atoms:
    """Acetylsalicylic acid: ring C1..C6, the carboxyl on C1 (in the ring plane, its O-H syn to C=O, C=O towards
    the ester), the acetoxy group on C2 (Z ester, twisted out of the ring plane). Of six starts (C=O towards or
    away from the ester, acetoxy twist 90°, -90°, 150°) this one and its mirror image relax lowest, 0.02-0.05 eV
    below the others."""
    ring = [1.39 * np.array([np.cos(t), np.sin(t), 0.0]) for t in np.radians(np.arange(0, 360, 60))]
    c = dict(enumerate(ring, start=1))
    ring_h = [place(c[k - 2 if k > 2 else k + 4], c[k - 1], c[k], 1.08, 120, 180) for k in (3, 4, 5, 6)]
    c7 = place(c[3], c[2], c[1], 1.49, 120, 180)  # the carboxyl C
    o1 = place(c[2], c[1], c7, 1.21, 123, 0)      # C=O, on C2's side
    o2 = place(c[2], c[1], c7, 1.35, 114, 180)    # C-OH, on C6's side
    h_o = place(c[1], c7, o2, 0.97, 106, 180)     # syn: cis to C=O
    o3 = place(c[4], c[3], c[2], 1.40, 120, 180)  # the ester O
    c8 = place(c[1], c[2], o3, 1.36, 118, 90)     # the acetyl C, out of the ring plane
    o4 = place(c[2], o3, c8, 1.20, 123, 0)        # Z ester: C=O eclipses the ring C
    c9 = place(c[2], o3, c8, 1.50, 111, 180)      # methyl C
    methyl = [place(o3, c8, c9, 1.09, 109.5, phi) for phi in (60, 180, 300)]
    positions = [*ring, c7, c8, c9, o1, o2, o3, o4, *ring_h, h_o, *methyl]
    return Atoms("C9O4H8", positions)


def relax(name: str, atoms: Atoms) -> Atoms:
    atoms.positions += np.random.default_rng(0).normal(scale=0.02, size=atoms.positions.shape)
    atoms.center()
    atoms.calc = SAKECalculator(ROOT / "potentials" / "ablation" / f"sake_{name}.pt", dtype="float64")
    BFGS(atoms, logfile=None).run(fmax=FMAX, steps=2000)
    fmax = np.abs(atoms.get_forces()).max()
    assert fmax < FMAX, f"{name}: BFGS did not converge (max force {fmax:.3g} eV/Å)"
    return atoms


def report(name: str, atoms: Atoms):
    """The bonds (the project's criterion, sake_md.md.bonds), the shortest distance, the flatness."""
    symbols = atoms.get_chemical_symbols()
    d = atoms.get_all_distances()
    print(f"{name} {atoms.get_chemical_formula()}: E = {atoms.get_potential_energy():.4f} eV")
    for i, j in find_bonds(atoms):
        print(f"  {symbols[i]}{i}-{symbols[j]}{j} {d[i, j]:.3f}")
    closest = d[np.triu_indices(len(atoms), 1)].min()
    assert closest > 0.9, f"{name}: atoms {closest:.2f} Å apart"
    flatness = np.linalg.svd(atoms.positions - atoms.positions.mean(0))[1][-1] / len(atoms) ** 0.5
    print(f"  shortest distance {closest:.3f} Å; rms distance from the best plane {flatness:.3f} Å")


def main(check: bool):
    molecules = {"malonaldehyde": (malonaldehyde, "propanedial OHC-CH2-CHO, the form of rMD17's malonaldehyde"),
                 "aspirin": (aspirin, "acetylsalicylic acid")}
    for name, (build, what) in molecules.items():
        atoms = relax(name, build())
        report(name, atoms)
        if check:
            continue
        out = Atoms(atoms.numbers, atoms.positions)  # positions only: no energy, forces or cell
        out.info["comment"] = (f"{name} ({what}): built from standard bond lengths and angles, relaxed with "
                               f"potentials/ablation/sake_{name}.pt (BFGS, fmax {FMAX} eV/A, float64) by "
                               "md_runs/structures/make_molecules.py")
        write(ROOT / "sake_md" / "molecules" / f"{name}.xyz", out, format="extxyz")


if __name__ == "__main__":
    main("--check" in sys.argv[1:])
