"""The shipped physics checks (``sake_md.testing``) pass for SAKE and fail, saying what broke, for a
potential that breaks each property; they need no pytest."""

import subprocess
import sys

import ase.build
import pytest
import torch

from sake_md.testing import check_batch_equals_single, check_forces_are_gradients, check_invariance

from .physics import small_potential


class Broken(torch.nn.Module):
    """Wraps a potential's backbone with a term that breaks one property."""

    def __init__(self, backbone, how):
        super().__init__()
        self.backbone, self.how = backbone, how
        self.embedding_in = backbone.embedding_in  # SAKEPotential.dtype reads it

    def forward(self, species, positions, mask, graph=None):
        y = self.backbone(species, positions, mask, graph)
        if self.how == "not invariant":  # depends on the absolute x coordinate
            return y + 0.1 * positions[..., 0] * mask
        return y + 0.1 * positions.shape[1] * mask  # "batch": depends on the padded size


def potential(how=None):
    p = small_potential(0, dtype=torch.float64)
    if how:
        p.backbone = Broken(p.backbone, how)
    return p


def test_the_checks_pass_for_sake_and_accept_atoms():
    ethanol, water = ase.build.molecule("CH3CH2OH"), ase.build.molecule("H2O")
    ethanol.rattle(0.05, seed=1)
    check_invariance(potential(), ethanol)
    check_forces_are_gradients(potential(), water)
    check_batch_equals_single(potential(), [ethanol, water])


def test_the_checks_say_what_broke():
    ethanol, water = ase.build.molecule("CH3CH2OH"), ase.build.molecule("H2O")
    with pytest.raises(AssertionError, match="energy changed under a rotation and translation: largest deviation"):
        check_invariance(potential("not invariant"), ethanol)
    with pytest.raises(AssertionError, match="structure 1 of the batch: energy differs from its own"):
        check_batch_equals_single(potential("batch"), [ethanol, water])
    p = potential()
    with pytest.raises(AssertionError, match="forces differ from finite differences"):
        check_forces_are_gradients(p, water, h=0.3, atol=1e-12)  # a step too large for this tolerance


def test_importing_the_checks_does_not_import_pytest():
    code = "import sys, sake_md, sake_md.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
