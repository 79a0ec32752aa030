"""sake_md: SAKE interatomic potentials for ASE and batched molecular dynamics."""

__version__ = "0.1.0"

from .calculator import SAKECalculator  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .committee import CommitteeCalculator  # noqa: E402
from .model import ModelConfig, SAKEPotential, compute_forces  # noqa: E402

__all__ = ["SAKECalculator", "SAKEPotential", "ModelConfig", "compute_forces", "load_checkpoint", "save_checkpoint",
           "CommitteeCalculator", "__version__"]
