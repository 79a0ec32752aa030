"""Molecular dynamics: ``run`` (ASE's integrators, one structure), ``replicas`` (a batched engine in
torch), ``stability`` and ``compare`` (the MD stability protocol of docs/stability.md)."""

from .bonds import BondCriterion, BrokenBond, find_bonds
from .replicas import (
    LangevinBAOAB,
    NoseHooverChain,
    ReplicaState,
    SAKEForces,
    StackedForces,
    VelocityVerlet,
    maxwell_boltzmann,
    simulate,
)
from .run import EXIT_COLLAPSED, MDSettings, RunSummary, run_md

__all__ = ["BondCriterion", "BrokenBond", "find_bonds", "LangevinBAOAB", "NoseHooverChain", "ReplicaState",
           "SAKEForces", "StackedForces", "VelocityVerlet", "maxwell_boltzmann", "simulate", "EXIT_COLLAPSED",
           "MDSettings", "RunSummary", "run_md"]
