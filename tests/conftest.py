"""Shared fixtures. Data from ../shared is optional: tests that need it skip when it is absent."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAKE_MD_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity" / "sake_reference_parity.npz"
RMD17 = Path(os.environ.get("SAKE_MD_RMD17", SHARED / "data" / "rmd17"))

# The suite's models are small: a second thread only adds synchronisation, and on a shared machine
# spinning OpenMP threads make it many times slower.
torch.set_num_threads(1)


def rmd17_file(name: str) -> Path:
    path = RMD17 / f"rmd17_{name}.npz"
    if not path.exists():
        pytest.skip(f"rMD17 data not found at {path}")
    return path


@pytest.fixture
def parity_npz():
    if not PARITY.exists():
        pytest.skip(f"reference parity fixture not found at {PARITY}")
    import numpy as np

    return np.load(PARITY)
