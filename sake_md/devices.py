"""Device and dtype names -> torch objects, for every entry point (calculator, training, compare, study)."""

import torch

from .errors import ConfigError, InputError

__all__ = ["DTYPES", "DTYPE_NAMES", "resolve_device", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
          torch.float64: torch.float64}
DTYPE_NAMES = tuple(k for k in DTYPES if isinstance(k, str))


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """"auto" picks CUDA when available; asking for CUDA without it is an error, not a silent fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but PyTorch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[dtype]
