"""What distinguishes the ablation variants (spec/variants.md); their shared physics is in test_model.py."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import eval_legendre

from sake_md.batch import collate
from sake_md.calculator import SAKECalculator
from sake_md.checkpoint import load_checkpoint, save_checkpoint
from sake_md.model import ModelConfig, SAKEPotential
from sake_md.spatial import SPATIAL_BLOCKS
from sake_md.spatial_dot import DotProductScalarization, chebyshev, pair_cosines
from sake_md.spatial_sh import SphericalHarmonicAttention

from .physics import energy_forces
from .test_model import molecule, perturbed_potential

NON_DEFAULT_OPTIONS = {"sake-sh": {"lmax": 2, "lambda_per_order": True}, "sake-dot": {"channels": 6, "n_basis": 3}}


def random_unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("variant", list(SPATIAL_BLOCKS))
def test_checkpoint_and_calculator_rebuild_every_variant(variant, tmp_path):
    """The variant and its options travel in the checkpoint: file -> identical energies and forces."""
    p = perturbed_potential(variant, options=NON_DEFAULT_OPTIONS.get(variant, {})).eval()
    atoms_z, atoms_x = molecule("CH3CH2OH")
    E0, F0 = energy_forces(p, atoms_z, atoms_x)
    path = save_checkpoint(tmp_path / f"{variant}.pt", p)
    loaded = load_checkpoint(path)
    assert loaded.config == p.config
    assert type(loaded.backbone.layers[0].spatial) is SPATIAL_BLOCKS[variant]
    E1, F1 = energy_forces(loaded, atoms_z, atoms_x)
    assert E1 == E0 and np.array_equal(F1, F0)

    import ase

    atoms = ase.Atoms(numbers=atoms_z, positions=atoms_x)
    atoms.calc = SAKECalculator(path)
    assert atoms.get_potential_energy() == E0
    assert np.array_equal(atoms.get_forces(), F0)


@pytest.mark.parametrize("variant", ["sake-sh", "sake-dot"])
def test_float32_close_to_float64(variant):
    p = perturbed_potential(variant)
    z, x = molecule("CH3CH2OH")
    E64, F64 = energy_forces(p, z, x, torch.float64)
    E32, F32 = energy_forces(p.float(), z, x, torch.float32)
    assert abs(E32 - E64) < 1e-4
    np.testing.assert_allclose(F32, F64, atol=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="lmax >= 1"):
        SAKEPotential([1, 6], ModelConfig(variant="sake-sh", options={"lmax": 0}))
    with pytest.raises(ValueError, match="positive integer n_basis"):
        SAKEPotential([1, 6], ModelConfig(variant="sake-dot", options={"n_basis": 0}))
    with pytest.raises(ValueError, match=r"has no option\(s\) lamx; its options: lmax, lambda_per_order"):
        SAKEPotential([1, 6], ModelConfig(variant="sake-sh", options={"lamx": 2}))


# --- sake-no-spatial sees distances only ---------------------------------------------------------
# On the dense graph, two configurations with equal distance matrices are related by a rotation,
# reflection and translation, so EVERY invariant variant depends on the distance matrix alone: a
# whole-molecule "distance-preserving map" cannot tell the variants apart. What no-spatial lacks is
# local: each message sees d_ij and never the angle between two neighbours. After one layer the
# atomic energy of atom i therefore depends only on its own distances d_ij (and the species), so
# swinging each neighbour independently on its sphere around i (all d_ij kept, angles and the d_jk
# changed) leaves y_i of no-spatial exactly unchanged, while the angular variants see the change.

def swing_neighbours(positions, centre, rng):
    """Rotate every atom about ``centre`` by its own random rotation: |x_j - x_i| kept, angles not."""
    x = positions.copy()
    for j in range(len(x)):
        if j != centre:
            x[j] = positions[centre] + Rotation.random(random_state=rng).apply(positions[j] - positions[centre])
    return x


def atomic_energy(potential, numbers, positions, i):
    b = collate([numbers], [positions], potential.species_index, torch.float64)
    return potential(b.species, b.positions, b.mask)[0, i].item()


def test_no_spatial_first_layer_sees_only_distances():
    z, x = molecule("CH3CH2OH")
    rng = np.random.default_rng(3)
    i = 1  # a carbon
    x2 = swing_neighbours(x, i, rng)
    dist = lambda y: np.linalg.norm(y[:, None] - y[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(x2)[i], dist(x)[i], atol=1e-12)
    assert np.abs(dist(x2) - dist(x)).max() > 0.5  # not a rigid motion
    change = {}
    for variant in SPATIAL_BLOCKS:
        p = perturbed_potential(variant, layers=1)
        change[variant] = abs(atomic_energy(p, z, x2, i) - atomic_energy(p, z, x, i))
    # the angular invariants are small at initialisation (changes ~1e-6 here), float64 round-off ~1e-16
    assert change["sake-no-spatial"] < 1e-12, change
    for variant in set(SPATIAL_BLOCKS) - {"sake-no-spatial"}:
        assert change[variant] > 1e-8, change


# --- sake-sh -------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_order", [False, True])
def test_sh_invariants_obey_the_addition_theorem(per_order):
    """|Σ_j λ^l_jc Y^l(u_j)|² = Σ_jk λ^l_jc λ^l_kc P_l(u_j·u_k), l = 1..3, with e3nn's harmonics."""
    rng = np.random.default_rng(0)
    n, c = 6, 5
    block = SphericalHarmonicAttention(hidden=4, coefficients=c, lmax=3, lambda_per_order=per_order).double()
    u = torch.tensor(random_unit_vectors(rng, n * n).reshape(1, n, n, 3))
    h_tilde = torch.tensor(rng.normal(size=(1, n, n, c)))
    inv_n = torch.full((1, 1, 1, 1), 1.0 / n, dtype=torch.float64)
    q = block.invariants(block.combine(h_tilde, u, inv_n)).detach().numpy()[0]       # (N, L·C)
    lam = torch.tanh(block.x_mixing(h_tilde)).detach().numpy()[0]                     # (N, N, L'·C)
    cos = np.einsum("ijx,ikx->ijk", u[0].numpy(), u[0].numpy())
    for l in (1, 2, 3):
        lam_l = lam[..., (l - 1) * c:l * c] if per_order else lam
        legendre = np.einsum("ijc,ikc,ijk->ic", lam_l, lam_l, eval_legendre(l, cos)) / n**2
        np.testing.assert_allclose(q[:, (l - 1) * c:l * c], legendre, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_order", [False, True])
def test_sh_with_lmax_1_is_sake(per_order):
    """With L = 1 and SAKE's weights, sake-sh computes SAKE's function: the harmonic normalisation
    ("norm") makes Y^1(u) = u, so the constant of the correspondence is exactly 1."""
    sake = perturbed_potential("sake")
    sh = perturbed_potential("sake-sh", seed=1, options={"lmax": 1, "lambda_per_order": per_order})
    sh.load_state_dict(sake.state_dict())
    z, x = molecule("CH3CH2OH")
    E0, F0 = energy_forces(sake, z, x)
    E1, F1 = energy_forces(sh, z, x)
    np.testing.assert_allclose(E1, E0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(F1, F0, rtol=0, atol=1e-12)
    # and a default sake-sh (L = 3) is a different function of the same geometry
    sh3 = perturbed_potential("sake-sh")
    assert abs(energy_forces(sh3, z, x)[0] - E0) > 1e-6


# --- sake-dot ------------------------------------------------------------------------------------

def test_chebyshev_basis():
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)
    expected = np.cos(np.arange(5)[:, None] * np.arccos(x.numpy())[None])  # T_b(cos θ) = cos(bθ)
    np.testing.assert_allclose(chebyshev(x, 5, dim=0).numpy(), expected, atol=1e-12)


def test_dot_contraction_equals_the_explicit_triple_sum():
    """The batched contraction over k equals (1/N²) Σ_jk (A h̃_ij) ⊙ (B h̃_ik) ⊙ ψ(u_ij·u_ik) formed naively."""
    torch.manual_seed(0)
    n, c = 5, 6
    block = DotProductScalarization(hidden=4, coefficients=c, channels=3, n_basis=4).double()
    u = torch.nn.functional.normalize(torch.randn(2, n, n, 3, dtype=torch.float64), dim=-1)
    h_tilde = torch.randn(2, n, n, c, dtype=torch.float64)
    inv_n = torch.full((2, 1, 1, 1), 1.0 / n, dtype=torch.float64)
    a, b = block.left(h_tilde), block.right(h_tilde)
    psi = block.angular(chebyshev(pair_cosines(u), 4))                   # (B, N, N, N, C'): small here
    explicit = (a[:, :, :, None] * b[:, :, None, :] * psi).sum((2, 3)) / n**2
    torch.testing.assert_close(block.scalars(h_tilde, u, inv_n), explicit, rtol=1e-12, atol=1e-14)
