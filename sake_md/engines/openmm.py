"""SAKE as an openmm-ml potential: ``MLPotential("sake", model=...)``.

Registered under the entry point group ``openmmml.potentials`` (pyproject.toml), so that after
``pip install sake-md[openmm]``::

    from openmmml import MLPotential
    potential = MLPotential("sake", model="potentials/sake_ethanol.pt")   # or a shipped name, "sake_ethanol"
    system = potential.createSystem(topology)                               # pure ML
    system = potential.createMixedSystem(topology, mm_system, ml_atoms, cutoff=1.0)   # ML/MM (periodic box)

OpenMM's units at this edge: nm, kJ/mol, and ``cutoff`` in nm (a float, or any ``openmm.unit`` length).
Keywords of ``createSystem``/``createMixedSystem``: ``dtype`` ("float32"/"float64", default the
checkpoint's), ``device`` ("cpu"), ``cutoff`` (puts a dense model in sparse mode; a sparse model keeps its
own), ``force`` ("auto", "torch" or "python").

The force: openmm-torch's ``TorchForce`` around the TorchScript module of ``sake_md.engines.torchscript``
(no Python per step), or, when openmm-torch is missing or does not work with the installed torch (its
PyPI wheels are built against one torch release and CUDA), OpenMM's ``PythonForce`` calling that same
module, after one warning. Both give the same numbers: the module is the same. Where a TorchForce cannot
be copied through XML (``torch_force_copy_crashes``), building one warns, naming what would crash.
"""

import functools
import io
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import CheckpointError, InputError
from ..inference import inference_potential
from ..model import SAKEPotential
from ..shipped import shipped_potential
from .torchscript import NM, export_energy_module

__all__ = ["SAKEPotentialImpl", "SAKEPotentialImplFactory", "openmm_topology", "resolve_model", "sake_force",
           "torch_force_unavailable", "torch_force_copy_crashes", "FORCE_KINDS"]

FORCE_KINDS = ("auto", "torch", "python")
EMBEDDING_KEYWORDS = {"linkAtomDistances", "mlLongRange"}  # read by openmm-ml's embeddings, then passed to us


# openmm-ml's MLPotentialImplFactory and MLPotentialImpl are implemented by their methods, not subclassed:
# importing openmmml here would load its entry points, this module among them, half-initialised (a
# circular import whenever sake_md.engines.openmm is imported before openmmml). openmm-ml calls createImpl,
# addForces, createMixedSystem, getSupportedEmbeddings and getMLLongRange and checks no types.

class SAKEPotentialImplFactory:
    """What openmm-ml's entry point loads: ``MLPotential("sake", model=...)`` calls ``createImpl``."""

    def createImpl(self, name: str, model=None, **args) -> "SAKEPotentialImpl":  # noqa: N802 (openmm-ml's name)
        if args:
            raise TypeError(f"MLPotential('sake') takes model=CHECKPOINT only; got {', '.join(args)} "
                            "(dtype, device, cutoff and force go to createSystem)")
        return SAKEPotentialImpl(model)


class SAKEPotentialImpl:
    """Adds the SAKE force to a System for openmm-ml's ``createSystem`` and mechanical embedding."""

    def __init__(self, model=None):
        self.model = resolve_model(model)

    def getSupportedEmbeddings(self) -> list[str]:  # noqa: N802 (openmm-ml's name)
        """No embedding of our own: openmm-ml's generic ones (mechanical by default) apply."""
        return []

    def createMixedSystem(self, *args, **kwargs):  # noqa: N802
        raise NotImplementedError("SAKE has no embedding of its own; openmm-ml uses its generic embeddings")

    def getMLLongRange(self) -> bool:  # noqa: N802 (openmm-ml's name)
        """SAKE is local: in a periodic box (sparse mode) an atom sees neighbours within the cutoff only."""
        return False

    def addForces(self, topology, system, atoms, forceGroup, dtype=None, device="cpu", cutoff=None,  # noqa: N802,N803
                  force="auto", **embedding):
        """``atoms``: indices of the ML atoms (None: all); ``cutoff`` in nm (see the module docstring).

        ``embedding``: the keywords openmm-ml's embeddings read themselves (passed on to us); others are refused.
        """
        unknown = sorted(set(embedding) - EMBEDDING_KEYWORDS)
        if unknown:
            raise TypeError(f"unknown keyword(s) for MLPotential('sake'): {', '.join(unknown)}; SAKE's own are "
                            "dtype, device, cutoff (nm) and force")
        indices = list(range(topology.getNumAtoms())) if atoms is None else [int(i) for i in atoms]
        numbers = atomic_numbers(topology, indices)
        periodic = topology.getPeriodicBoxVectors() is not None
        potential = inference_potential(self.model, device, dtype, _cutoff_angstrom(cutoff))
        check_species(potential, numbers, indices, topology)
        if periodic and potential.cutoff is None:
            raise InputError(
                "the topology is periodic (it has box vectors) but this SAKE model is dense: all pairs of a "
                "molecule, no minimum image, so it would compute the wrong energy. Evaluate it in sparse mode "
                "with a cutoff in nm larger than the ML region plus its envelope (e.g. cutoff=1.0 for a small "
                "solute), or use a model trained with a cutoff (sake-md train --cutoff 5.0).")
        f = sake_force(potential, numbers, indices, periodic, force)
        f.setForceGroup(forceGroup)
        system.addForce(f)


def resolve_model(model) -> Path | SAKEPotential:
    """A checkpoint path, a shipped potential's name (``"sake_ethanol"`` or ``"sake_ethanol.pt"``), a
    ``SAKEPotential``, or None for the default shipped potential. A missing file is a ``CheckpointError``."""
    if isinstance(model, SAKEPotential):
        return model
    if model is None:
        return shipped_potential()
    path = Path(model)
    if path.exists():
        return path
    if path.parent == Path(".") and "/" not in str(model):
        name = str(model) if str(model).endswith(".pt") else f"{model}.pt"
        try:
            return shipped_potential(name)
        except CheckpointError:
            pass
    raise CheckpointError(f"model {model!r} is neither a checkpoint file nor a shipped potential's name")


def openmm_topology(atoms, residue: str = "MOL", names: list[str] | None = None):
    """An OpenMM Topology of ASE ``atoms``: one residue, their elements, bonds by the project's criterion
    (``sake_md.md.bonds``; molecules only) and, when periodic, the cell as box vectors in nm."""
    from openmm import app

    from ..md.bonds import find_bonds

    topology = app.Topology()
    res = topology.addResidue(residue, topology.addChain())
    symbols = atoms.get_chemical_symbols()
    names = names or [f"{s}{k}" for k, s in enumerate(symbols)]
    added = [topology.addAtom(n, app.Element.getBySymbol(s), res) for n, s in zip(names, symbols, strict=True)]
    if atoms.pbc.any():
        if not atoms.pbc.all():
            raise InputError(f"OpenMM boxes are periodic in all three directions; pbc={atoms.pbc.tolist()}")
        topology.setPeriodicBoxVectors([openmm.Vec3(*v) / NM for v in atoms.cell.array])
    else:
        for i, j in find_bonds(atoms):
            topology.addBond(added[i], added[j])
    return topology


def atomic_numbers(topology, indices: list[int]) -> np.ndarray:
    """Atomic numbers of the atoms ``indices`` of ``topology``; an atom without an element is refused."""
    atoms = list(topology.atoms())
    numbers = []
    for i in indices:
        if atoms[i].element is None:
            raise InputError(f"atom {i} ({atoms[i].name} of residue {atoms[i].residue.name}) has no element; "
                             "SAKE needs the element of every atom it models")
        numbers.append(atoms[i].element.atomic_number)
    return np.array(numbers, dtype=np.int64)


def check_species(potential: SAKEPotential, numbers: np.ndarray, indices: list[int], topology):
    """Refuse, when the system is built, the first atom whose element the model was not trained on."""
    from ase.data import chemical_symbols

    known = set(potential.atomic_numbers)
    for k, z in enumerate(numbers):
        if int(z) not in known:
            atom = list(topology.atoms())[indices[k]]
            knows = ", ".join(chemical_symbols[z] for z in potential.atomic_numbers)
            raise InputError(f"atom {indices[k]} ({atom.name} of residue {atom.residue.name}) is "
                             f"{chemical_symbols[int(z)]} (Z={int(z)}), an element this SAKE model was not "
                             f"trained on; it knows {knows}")


def _cutoff_angstrom(cutoff) -> float | None:
    """nm (a float or an ``openmm.unit`` length) -> Å; None stays None."""
    if cutoff is None:
        return None
    if unit.is_quantity(cutoff):
        cutoff = cutoff.value_in_unit(unit.nanometer)
    return float(cutoff) * NM


def sake_force(potential: SAKEPotential, numbers, indices: list[int], periodic: bool, kind: str = "auto"
               ) -> openmm.Force:
    """The SAKE force on the particles ``indices`` of a System, energies in kJ/mol.

    ``kind``: "torch" (openmm-torch's TorchForce, an error when it does not work here), "python" (OpenMM's
    PythonForce running the same TorchScript module), "auto" (TorchForce where it works, else PythonForce
    after one warning saying why).
    """
    if kind not in FORCE_KINDS:
        raise InputError(f"force={kind!r}; choose one of {', '.join(FORCE_KINDS)}")
    reason = torch_force_unavailable() if kind != "python" else None
    if kind == "torch" and reason:
        raise InputError(f"force='torch' asked for openmm-torch's TorchForce, but {reason}")
    if kind == "auto" and reason:
        warnings.warn(f"sake_md: {reason}; SAKE runs in OpenMM through a PythonForce instead (the same "
                      "TorchScript module, called from Python every step)", RuntimeWarning, stacklevel=3)
        kind = "python"
    if kind == "python":
        module = export_energy_module(potential, numbers, periodic)
        f = openmm.PythonForce(PythonForceCallback(module, periodic))
        f.setParticles(indices)
    else:
        import openmmtorch

        crash = torch_force_copy_crashes()
        if crash:
            warnings.warn(f"sake_md: {crash}; for those, pass force='python' (the same module through a "
                          "PythonForce)", RuntimeWarning, stacklevel=3)
        f = openmmtorch.TorchForce(export_energy_module(potential, numbers, periodic, indices))
    f.setUsesPeriodicBoundaryConditions(periodic)
    return f


class PythonForceCallback:
    """PythonForce's function: the state holds the force's particles only; returns kJ/mol and kJ/mol/nm.

    Picklable through the module's TorchScript bytes: OpenMM pickles the function whenever a System is
    serialized or a force cloned (XmlSerializer, openmm-ml's ``interpolate=True``).
    """

    def __init__(self, module: torch.jit.ScriptModule, periodic: bool):
        self.module, self.periodic = module, periodic

    def __call__(self, state):
        x = torch.from_numpy(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)).requires_grad_(True)
        box = None
        if self.periodic:
            box = torch.from_numpy(np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)))
        energy = self.module(x, box)
        (grad,) = torch.autograd.grad(energy, x)
        return float(energy.detach()), -grad.numpy()

    def __getstate__(self) -> dict:
        buffer = io.BytesIO()
        torch.jit.save(self.module, buffer)
        return {"module": buffer.getvalue(), "periodic": self.periodic}

    def __setstate__(self, state: dict):
        self.module, self.periodic = torch.jit.load(io.BytesIO(state["module"])), state["periodic"]


@functools.cache
def torch_force_unavailable() -> str | None:
    """Why openmm-torch's TorchForce cannot run here (None when a probe force evaluates correctly).

    The probe is needed: the PyPI wheel imports against the wrong torch when CUDA libraries are found and
    then fails at the first force evaluation (a C++ ABI mismatch), not at import.
    """
    try:
        import openmmtorch
    except Exception as e:  # ImportError, or OSError from a shared library of the wrong build
        return f"openmm-torch cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    try:
        module = torch.jit.script(_Probe())
        system = openmm.System()
        system.addParticle(1.0)
        system.addForce(openmmtorch.TorchForce(module))
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([openmm.Vec3(0.1, 0.2, 0.3)])
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    except Exception as e:  # OpenMMException with torch's C++ error text
        return (f"openmm-torch's TorchForce does not work with torch {torch.__version__} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if abs(energy - 0.14) > 1e-9:
        return f"openmm-torch's TorchForce gave {energy} kJ/mol for a probe whose energy is 0.14"
    return None


@functools.cache
def torch_force_copy_crashes() -> str | None:
    """Why copying a TorchForce through OpenMM's XML kills the process (None when it does not).

    openmm-torch 1.5's PyPI wheel, built against OpenMM 8.5, crashes in deserialization under OpenMM 8.6 (a
    C++ return type changed), and XmlSerializer, ``copy.deepcopy`` of a System and openmm-ml's
    ``interpolate=True`` all copy that way. A crash cannot be caught, so the probe runs in a child process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "probe.pt"
        torch.jit.save(torch.jit.script(_Probe()), module)
        probe = ("import sys, torch, openmm, openmmtorch\n"  # torch first: it loads the CUDA libraries it needs
                 "openmm.XmlSerializer.clone(openmmtorch.TorchForce(sys.argv[1]))\n")
        done = subprocess.run([sys.executable, "-c", probe, str(module)], capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        return None
    how = f"signal {-done.returncode}" if done.returncode < 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    return (f"openmm-torch {_version('openmmtorch')} with OpenMM {openmm.__version__} cannot copy a TorchForce "
            f"through XML ({how}): serializing the System, copy.deepcopy and openmm-ml's interpolate=True would "
            "end the process")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


class _Probe(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions.to(torch.float64) ** 2).sum()
