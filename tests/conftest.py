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


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """12 EMT-labelled frames of small molecules as an rMD17-style npz (the training tests' data)."""
    from .test_data import emt_frames, write_npz

    return write_npz(tmp_path_factory.mktemp("data") / "emt.npz", emt_frames(12, seed=3))
