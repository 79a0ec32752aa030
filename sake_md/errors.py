"""Exceptions raised for bad input. Each message says what was expected and what was found."""

__all__ = ["SakeMDError", "CheckpointError", "InputError", "DataError", "ConfigError", "CommitteeError", "CompileError"]


class SakeMDError(Exception):
    """Base class of every error sake_md raises on purpose."""


class CheckpointError(SakeMDError):
    """A checkpoint file is missing, not ours, corrupted, or from a newer format."""


class InputError(SakeMDError, ValueError):
    """A structure the model cannot evaluate (unknown element, NaN positions, periodic cell, ...)."""


class DataError(SakeMDError, ValueError):
    """A data file that cannot be used for training or evaluation."""


class ConfigError(SakeMDError, ValueError):
    """Hyperparameters that do not describe a model (unknown variant or option)."""


class CommitteeError(SakeMDError, ValueError):
    """Potentials that cannot form a committee (different species, units or dtypes)."""


class CompileError(SakeMDError):
    """Exporting or precompiling a potential failed (the message carries torch's error)."""
