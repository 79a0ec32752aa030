"""Adapters that take sake_md potentials to other MD engines (OpenMM, LAMMPS, i-PI).

Each adapter imports only the inference layer (``sake_md.inference``, the model, its checkpoint and
batching), never training, the CLI or the study, and imports its engine lazily: ``import sake_md`` never
imports OpenMM, LAMMPS or i-PI.
"""
