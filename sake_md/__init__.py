"""sake_md: SAKE interatomic potentials for ASE and batched molecular dynamics."""

from .calculator import SAKECalculator
from .checkpoint import load_checkpoint, save_checkpoint
from .committee import CommitteeCalculator
from .model import ModelConfig, SAKEPotential, compute_forces
from .version import __version__

__all__ = ["SAKECalculator", "SAKEPotential", "ModelConfig", "compute_forces", "load_checkpoint", "save_checkpoint",
           "CommitteeCalculator", "__version__"]
