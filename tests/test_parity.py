"""The port computes the reference JAX code's function: its weights in, its outputs out."""

import numpy as np
import pytest
import torch

from sake_md.checkpoint import head_major
from sake_md.model import ModelConfig, SAKEPotential

LAYER_KEYS = {
    "edge_model/mlp_in": "filter_in",
    "edge_model/mlp_out/layers_0": "edge_in",
    "edge_model/mlp_out/layers_2": "edge_out",
    "semantic_attention_mlp/layers_0": "semantic",
    "x_mixing/layers_0": "spatial.x_mixing",
    "post_norm_mlp/layers_0": "spatial.post_norm_mlp.0",
    "post_norm_mlp/layers_2": "spatial.post_norm_mlp.2",
    "node_mlp/layers_0": "node_mlp.0",
    "node_mlp/layers_2": "node_mlp.2",
    "v_mixing": "spatial.v_mixing",
    "velocity_mlp/layers_0": "velocity_mlp.0",
    "velocity_mlp/layers_2": "velocity_mlp.2",
}


def reference_state_dict(Z, perturbed: bool) -> dict:
    """Flax parameter arrays -> our state dict (kernels transposed to (out, in))."""

    def get(key):
        if perturbed and f"perturbed/{key}" in Z.files:
            return Z[f"perturbed/{key}"]
        return Z[key]

    def dense(prefix, ours, out):
        if f"{prefix}/kernel" not in Z.files:  # layer 1 has no velocity_mlp
            return
        out[f"{ours}.weight"] = torch.from_numpy(get(f"{prefix}/kernel").T.astype(np.float64))
        if f"{prefix}/bias" in Z.files:
            out[f"{ours}.bias"] = torch.from_numpy(get(f"{prefix}/bias").astype(np.float64))

    sd = {}
    dense("params/embedding_in", "backbone.embedding_in", sd)
    # the reference flattens h̃ as f·K + k; sake_md computes it head-major (k·H + f)
    x_mixing = [f"backbone.layers.{layer}.spatial.x_mixing.weight" for layer in range(6)]
    dense("params/embedding_out/layers_0", "backbone.embedding_out.0", sd)
    dense("params/embedding_out/layers_2", "backbone.embedding_out.2", sd)
    for layer in range(6):
        p = f"params/d{layer}"
        for theirs, ours in LAYER_KEYS.items():
            dense(f"{p}/{theirs}", f"backbone.layers.{layer}.{ours}", sd)
        for name in ("means", "betas"):
            rbf = get(f"{p}/edge_model/kernel/{name}").astype(np.float64)
            sd[f"backbone.layers.{layer}.rbf.{name}"] = torch.from_numpy(rbf)
    for key in x_mixing:
        sd[key] = head_major(sd[key], 64, 4)
    return sd


def reference_model(Z, perturbed=False, dtype=torch.float64) -> SAKEPotential:
    model = SAKEPotential([1, 6, 7, 8], ModelConfig()).to(torch.float64)
    missing, unexpected = model.load_state_dict(reference_state_dict(Z, perturbed), strict=False)
    assert not unexpected
    assert all(k.startswith("backbone.layers.0.velocity_mlp") for k in missing), missing
    return model.to(dtype)


def run(model, Z, mol, dtype):
    species = torch.from_numpy(Z[f"{mol}/h0"].argmax(-1))[None]
    x = torch.from_numpy(Z[f"{mol}/x"]).to(dtype)[None].requires_grad_()
    mask = torch.ones_like(species, dtype=torch.bool)
    y = model.backbone(species, x, mask)[0]
    E = y.sum()
    (g,) = torch.autograd.grad(E, x)
    return y.detach().numpy(), E.item(), -g[0].numpy()


@pytest.mark.parametrize("mol", ["ethanol", "aspirin"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_parity_float64(parity_npz, mol, perturbed):
    Z = parity_npz
    key = f"{mol}/perturbed/f64" if perturbed else f"{mol}/f64"
    y, E, F = run(reference_model(Z, perturbed), Z, mol, torch.float64)
    np.testing.assert_allclose(y, Z[f"{key}/y"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(E, Z[f"{key}/E"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(F, Z[f"{key}/F"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mol", ["ethanol", "aspirin"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_parity_float32(parity_npz, mol, perturbed):
    Z = parity_npz
    key = f"{mol}/perturbed/f32" if perturbed else f"{mol}/f32"
    y, E, F = run(reference_model(Z, perturbed, torch.float32), Z, mol, torch.float32)
    np.testing.assert_allclose(y, Z[f"{key}/y"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(E, Z[f"{key}/E"], rtol=0, atol=2e-6)
    np.testing.assert_allclose(F, Z[f"{key}/F"], rtol=0, atol=1e-7)


def test_parity_layer_by_layer(parity_npz):
    """Layer outputs h, x, v of the reference, so a regression points at the layer that broke."""
    Z = parity_npz
    model = reference_model(Z).backbone
    species = torch.from_numpy(Z["ethanol/h0"].argmax(-1))[None]
    x = torch.from_numpy(Z["ethanol/x"])[None]
    mask = torch.ones_like(species, dtype=torch.bool)
    from sake_md.layer import PairMasks

    h = torch.nn.functional.embedding(species, model.embedding_in.weight.t()) + model.embedding_in.bias
    np.testing.assert_allclose(h[0].detach().numpy(), Z["ethanol/f64/embed_h"], atol=1e-12)
    v, graph = None, PairMasks.from_mask(mask, torch.float64)
    with torch.no_grad():
        for i, layer in enumerate(model.layers, start=1):
            h, x, v = layer(h, x, v, graph)
            for name, t in (("h", h), ("x", x), ("v", v)):
                np.testing.assert_allclose(t[0].numpy(), Z[f"ethanol/f64/layer{i}/{name}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(x[0].numpy(), Z["ethanol/f64/x_final"], atol=1e-10)
