"""Physics of every registered variant: symmetry, forces = -dE/dx, batch = single, parameter count."""

import ase.build
import numpy as np
import pytest
import torch

from sake_md.model import ModelConfig, SAKEPotential, count_parameters
from sake_md.spatial import SPATIAL_BLOCKS

from .physics import assert_batch_equals_single, assert_forces_are_gradient, assert_invariant

VARIANTS = list(SPATIAL_BLOCKS)
SMALL = dict(hidden=16, heads=2, layers=3, radial=8)


def molecule(name, seed=0):
    atoms = ase.build.molecule(name)
    atoms.rattle(0.05, seed=seed)
    return atoms.numbers, atoms.positions.copy()


def perturbed_potential(variant, seed=0, **kw) -> SAKEPotential:
    """A float64 potential with non-zero biases, so that no term is trivially zero."""
    torch.manual_seed(seed)
    p = SAKEPotential([1, 6, 7, 8], ModelConfig(variant=variant, **(SMALL | kw)), energy_scale=1.7,
                      energy_shift=-3.0, atomic_energies=[-0.5, -1.0, -1.5, -2.0]).double()
    with torch.no_grad():
        for name, t in p.named_parameters():
            if name.endswith("bias"):
                t.normal_(0, 0.1)
    return p


@pytest.mark.parametrize("variant", VARIANTS)
def test_symmetries(variant):
    p = perturbed_potential(variant)
    z, x = molecule("CH3CH2OH")
    assert_invariant(p, z, x, np.random.default_rng(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forces_are_minus_energy_gradient(variant):
    p = perturbed_potential(variant)
    z, x = molecule("CH3CHO")
    assert_forces_are_gradient(p, z, x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_equals_single(variant):
    p = perturbed_potential(variant)
    mols = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH3CONH2"), molecule("CH4", seed=2)]
    assert_batch_equals_single(p, mols)


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_atom_energies_sum_to_total(variant):
    p = perturbed_potential(variant)
    z, x = molecule("CH3CH2OH")
    from sake_md.batch import collate

    b = collate([z], [x], p.species_index, torch.float64)
    out = p.predict(b.species, b.positions, b.mask)
    np.testing.assert_allclose(out["energies"].sum().item(), out["energy"].item(), atol=1e-12)


def test_md17_parameter_count():
    """spec: layers 2-6 have 141,914 parameters, layer 1 137,690 (no φ_v); 851,805 with 4 elements."""
    p4 = SAKEPotential([1, 6, 7, 8])
    assert [count_parameters(layer) for layer in p4.backbone.layers] == [137_690] + [141_914] * 5
    assert count_parameters(p4) == 851_805
    assert count_parameters(SAKEPotential(list(range(1, 9)))) == 852_061


def test_float32_close_to_float64():
    p = perturbed_potential("sake")
    z, x = molecule("CH3CH2OH")
    from .physics import energy_forces

    E64, F64 = energy_forces(p, z, x, torch.float64)
    E32, F32 = energy_forces(p.float(), z, x, torch.float32)
    assert abs(E32 - E64) < 1e-4
    np.testing.assert_allclose(F32, F64, atol=1e-5)


def test_energy_constants_stay_float64_and_out_of_the_state_dict():
    """A float32 model keeps its scale, shift and atomic reference energies in float64 (exact totals of thousands of
    eV); they are not in the state dict (the checkpoint stores them apart) and can be set as floats."""
    p = SAKEPotential([1, 6], ModelConfig(**SMALL), energy_scale=0.123456789012, energy_shift=-97123.456789012,
                      atomic_energies=[-13.6056931, -1029.86314159]).float()
    assert p.dtype == torch.float32
    assert p._refs.tolist() == [-13.6056931, -1029.86314159]
    assert (p.energy_scale, p.energy_shift) == (0.123456789012, -97123.456789012)
    assert all(t.dtype == torch.float64 for t in (p._scale, p._shift, p._refs))
    assert not {"_scale", "_shift", "_refs"} & set(p.state_dict())
    p.energy_shift += 1.0
    z = torch.tensor([[0, 1]])
    ref = p.reference_energy(z, torch.ones(1, 2, dtype=torch.bool))
    assert ref.dtype == torch.float64 and float(ref.sum()) == pytest.approx(-97122.456789012 - 1043.46883469, abs=1e-9)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        ModelConfig(variant="nope")


def test_unknown_variant_option_is_refused():
    with pytest.raises(ValueError, match=r"'sake-sh' has no option\(s\) lmaxx; its options: lmax, lambda_per_order"):
        ModelConfig(variant="sake-sh", options={"lmaxx": 2})
    with pytest.raises(ValueError, match="'sake' has no option"):
        ModelConfig(variant="sake", options={"lmax": 2})
