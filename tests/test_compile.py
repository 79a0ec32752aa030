"""Compiled inference: the compiled graph computes the eager function for every variant, recompiles only
for a new shape or dtype, falls back to eager with one warning, and serves the calculator, the replica
engine, ``sake-md run`` and the exported ``.pt2``.

Compiling is slow on a CPU (tens of seconds per graph, seconds from torch's on-disk cache), so the
compiled objects are module-scoped and every test reuses a shape that another test has compiled
where it can: (1, 9) float64 for each variant, (2, 9) float64 and (1, 9) float32 for ``sake``.
"""

import warnings

import ase.build
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sake_md import SAKECalculator, save_checkpoint
from sake_md import compile as sc
from sake_md.batch import atoms_to_batch
from sake_md.cli import main
from sake_md.md.replicas import ReplicaState, SAKEForces, VelocityVerlet, simulate
from sake_md.spatial import SPATIAL_BLOCKS

from .test_model import perturbed_potential

VARIANTS = list(SPATIAL_BLOCKS)
TINY = dict(hidden=8, heads=2, layers=2, radial=8)


def tiny(variant="sake", seed=0):
    p = perturbed_potential(variant, seed, **TINY)
    for t in p.parameters():
        t.requires_grad_(False)
    return p


def molecules(*names, seed=0):
    out = []
    for k, name in enumerate(names):
        atoms = ase.build.molecule(name)
        atoms.rattle(0.05, seed=seed + k)
        out.append(atoms)
    return out


def batch(potential, atoms_list):
    return atoms_to_batch(atoms_list, potential, potential.dtype, "cpu")


def eager(potential, b) -> dict:
    return potential.predict(b.species, b.positions, b.mask)


def assert_same(out, ref, dtype):
    """float64: 1e-10 absolute; float32: 1e-5 relative to the largest value of each output."""
    for key in ("energy", "energies", "forces"):
        got, want = out[key].detach().double(), ref[key].detach().double()
        assert got.shape == want.shape, key
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=key)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item(), msg=key)


@pytest.fixture(scope="module")
def compiled():
    """One CompiledPotential per variant, compiled for ethanol (1, 9) in float64 on first use."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = sc.CompiledPotential(tiny(variant), verbose=False)
        return cache[variant]

    return get


@pytest.fixture(autouse=True)
def no_silent_recompiles():
    """A dynamo recompile of a graph (a guard failing on grad mode, strides, ...) is an error here:
    the only recompiles allowed are new graphs for new shapes and dtypes, which CompiledPotential counts."""
    import torch._dynamo

    with torch._dynamo.config.patch(error_on_recompile=True):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_equals_eager(compiled, variant, dtype):
    model = compiled(variant) if dtype == torch.float64 else sc.CompiledPotential(tiny(variant).float(), False)
    b = batch(model.potential, molecules("CH3CH2OH"))
    out = model(b.species, b.positions, b.mask)
    assert model.compiles == 1 and model.eager_reason is None
    assert out["energy"].dtype == out["energies"].dtype == torch.float64 and out["forces"].dtype == dtype
    assert_same(out, eager(model.potential, b), dtype)
    # other coordinates of the same shape: the same graph, and still the eager numbers
    b2 = batch(model.potential, molecules("CH3CH2OH", seed=7))
    assert_same(model(b2.species, b2.positions, b2.mask), eager(model.potential, b2), dtype)
    assert model.compiles == 1


def test_new_size_recompiles_once_and_stays_correct(compiled):
    model = compiled("sake")
    one = batch(model.potential, molecules("CH3CH2OH"))
    model(one.species, one.positions, one.mask)
    first = model.compiles
    two = batch(model.potential, molecules("CH3OH", "CH3CH2OH"))  # methanol padded to ethanol's 9 atoms
    assert two.species.shape == (2, 9)
    assert_same(model(two.species, two.positions, two.mask), eager(model.potential, two), torch.float64)
    assert model.compiles == first + 1
    for b in (one, two):  # both shapes cached: no further compile
        assert_same(model(b.species, b.positions, b.mask), eager(model.potential, b), torch.float64)
    assert model.compiles == first + 1
    assert len(model.graphs) == 2


def test_weights_are_inputs_not_constants(compiled):
    """Changing the weights in place changes the compiled results, without a recompile."""
    model = compiled("sake")
    b = batch(model.potential, molecules("CH3CH2OH"))
    before = model(b.species, b.positions, b.mask)["energy"].clone()
    count = model.compiles
    weight = model.potential.backbone.embedding_out[2].weight
    saved = weight.clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)
        after = model(b.species, b.positions, b.mask)
        assert not torch.allclose(after["energy"], before)
        assert_same(after, eager(model.potential, b), torch.float64)
        assert model.compiles == count
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_energy_constants_are_inputs_so_models_share_a_graph(compiled):
    """The energy scale and shift enter the graph as inputs, not literals: two models that differ only in them
    trace to the same graph (so torch's on-disk cache serves the second model's compile), and changing them in
    place changes the compiled results without a recompile."""
    b = batch(tiny(), molecules("CH3CH2OH"))
    one, other = tiny(), tiny()
    other.energy_scale, other.energy_shift = 2.5, -1234.5
    codes = [sc.trace(p, b.species, b.positions, b.mask).code for p in (one, other)]
    assert codes[0] == codes[1]
    model = compiled("sake")
    before = model(b.species, b.positions, b.mask)
    count = model.compiles
    saved = model.potential.energy_scale, model.potential.energy_shift
    try:
        model.potential.energy_scale, model.potential.energy_shift = 3.0 * saved[0], saved[1] - 7.0
        after = model(b.species, b.positions, b.mask)
        assert_same(after, eager(model.potential, b), torch.float64)
        assert not torch.allclose(after["forces"], before["forces"])
        assert model.compiles == count
    finally:
        model.potential.energy_scale, model.potential.energy_shift = saved


def test_new_dtype_recompiles_float32(compiled):
    model = compiled("sake")
    b64 = batch(model.potential, molecules("CH3CH2OH"))
    model(b64.species, b64.positions, b64.mask)
    count = model.compiles
    model.potential.float()
    try:
        b = batch(model.potential, molecules("CH3CH2OH"))
        out = model(b.species, b.positions, b.mask)
        assert model.compiles == count + 1
        assert out["forces"].dtype == torch.float32 and out["energy"].dtype == torch.float64
        assert_same(out, eager(model.potential, b), torch.float32)
    finally:
        model.potential.double()
    assert_same(model(b64.species, b64.positions, b64.mask), eager(model.potential, b64), torch.float64)
    assert model.compiles == count + 1


# --- fallback ------------------------------------------------------------------------------------------

def _assert_one_warning(record, text):
    ours = [w for w in record if "eagerly" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in record]
    assert text in str(ours[0].message)


def test_compile_raising_falls_back_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(torch, "compile", broken)
    model = sc.CompiledPotential(tiny(), verbose=False)
    b = batch(model.potential, molecules("CH3CH2OH"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            out = model(b.species, b.positions, b.mask)
    _assert_one_warning(record, "no compiler today")
    assert model.eager_reason is not None and model.compiles == 0
    assert_same(out, eager(model.potential, b), torch.float64)


def test_first_call_failing_falls_back(monkeypatch):
    """inductor compiles lazily: a failure at the first call (e.g. the C++ build) must fall back too."""

    def compile_that_fails_later(graph, **kwargs):
        def call(*args):
            raise OSError("g++: fatal error: killed")

        return call

    monkeypatch.setattr(torch, "compile", compile_that_fails_later)
    model = sc.CompiledPotential(tiny(), verbose=False)
    b = batch(model.potential, molecules("CH3CH2OH"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = [model(b.species, b.positions, b.mask) for _ in range(2)]
    _assert_one_warning(record, "g++: fatal error")
    assert_same(out[-1], eager(model.potential, b), torch.float64)


def test_no_compiler_available_falls_back(monkeypatch):
    monkeypatch.setattr(sc, "compiler_unavailable", lambda device: "no C++ compiler was found")
    model = sc.CompiledPotential(tiny(), verbose=False)
    b = batch(model.potential, molecules("CH3CH2OH"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = model(b.species, b.positions, b.mask)
    _assert_one_warning(record, "no C++ compiler")
    assert_same(out, eager(model.potential, b), torch.float64)


def test_compile_disabled_is_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compile=False must not compile"))
    potential = tiny()
    atoms = molecules("CH3CH2OH")[0]
    atoms.calc = SAKECalculator(potential, compile=False)
    b = batch(potential, [atoms])
    np.testing.assert_allclose(atoms.get_forces(), eager(potential, b)["forces"][0].numpy(), rtol=0, atol=1e-12)


# --- choosing ------------------------------------------------------------------------------------------

def test_auto_rule():
    assert sc.should_compile(10_000, 0.02, 60.0)  # 200 s eager > 3 × 60 s
    assert not sc.should_compile(1_000, 0.02, 60.0)  # 20 s eager
    assert not sc.should_compile(None, 1.0, 1.0)  # unknown length: never
    with pytest.raises(ValueError, match="auto"):
        sc.check_mode("yes")


def test_auto_decides_from_the_run_length(monkeypatch, capsys):
    monkeypatch.setattr(sc, "expected_compile_s", lambda potential, key: (10.0, "a test"))
    monkeypatch.setattr(sc, "eager_call_s", lambda *a, **k: 0.01)
    p = tiny()
    b = batch(p, molecules("CH3CH2OH"))
    short = sc.make_predictor(p, "auto", b.species, b.positions, b.mask, calls=100)
    assert not isinstance(short, sc.CompiledPotential)
    assert_same(short(b.species, b.positions, b.mask), eager(p, b), torch.float64)
    long = sc.make_predictor(p, "auto", b.species, b.positions, b.mask, calls=100_000)
    assert isinstance(long, sc.CompiledPotential)  # compiles lazily: nothing compiled yet
    err = capsys.readouterr().err
    assert err.count("compile=auto") == 1 and "-> compiling" in err  # staying eager is silent


def test_persistent_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sc.use_persistent_cache() == str(tmp_path / "sake_md" / "inductor")
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert sc.use_persistent_cache() == str(tmp_path / "mine")  # the user's choice wins
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    cache_dir()  # torch writes its /tmp default into the environment: not a user's choice
    assert sc.use_persistent_cache() == str(tmp_path / "sake_md" / "inductor")


def test_compile_times_are_recorded(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    p = tiny()
    key = (1, 9, torch.float64, torch.device("cpu"), "sake")
    assert sc.expected_compile_s(p, key)[0] == sc.COLD_COMPILE_S["cpu"]
    record = sc.compile_record_key(p, key)
    sc.record_compile_s(record, 120.0)  # the first compile: the next one should come from the cache
    assert sc.expected_compile_s(p, key)[0] == pytest.approx(sc.WARM_FRACTION * 120.0)
    sc.record_compile_s(record, 7.04)  # and then it did
    assert sc.expected_compile_s(p, key)[0] == 7.0
    other = (2, 9, torch.float64, torch.device("cpu"), "sake")
    assert sc.expected_compile_s(p, other)[0] == sc.COLD_COMPILE_S["cpu"]


# --- users of the compiled path ------------------------------------------------------------------------

def test_calculator_compile_true(capsys):
    potential = tiny()
    atoms = molecules("CH3CH2OH")[0]
    atoms.calc = SAKECalculator(potential, compile=True)  # (1, 9) float64: torch's cache has it
    forces, energies = atoms.get_forces(), atoms.get_potential_energies()
    assert "compiled in" in capsys.readouterr().err
    ref = eager(potential, batch(potential, [atoms]))
    np.testing.assert_allclose(forces, ref["forces"][0].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(energies, ref["energies"][0].numpy(), rtol=0, atol=1e-10)
    assert atoms.calc.evaluator.compiles == 1 and atoms.calc.evaluator.eager_reason is None


def test_replica_engine_compiled_equals_eager():
    potential = tiny()
    atoms_list = molecules("CH3OH", "CH3CH2OH")  # (2, 9) float64, as in the recompile test
    trajectories = []
    for mode in (False, True):
        state = ReplicaState.from_atoms(atoms_list)
        model = SAKEForces.for_atoms(potential, atoms_list, compile=mode)
        simulate(state, VelocityVerlet(0.5 * ase.units.fs), model, 5)
        trajectories.append(state.positions)
    assert isinstance(model.predict, sc.CompiledPotential) and model.predict.compiles == 1
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=0, atol=1e-10)


def test_run_command_compile_flag(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.pt", tiny())
    args = ["run", "--potential", str(path), "--steps", "3", "--no-progress", "--traj", "", "--log", ""]
    result = CliRunner().invoke(main, [*args, "--compile"])
    assert result.exit_code == 0, result.output
    assert "compiling sake energy+forces for 1 × 9 atoms" in result.output and "stable" in result.output
    result = CliRunner().invoke(main, args)  # auto: 3 steps never repay a compile
    assert result.exit_code == 0 and "compil" not in result.output


# --- the reference parity fixture through the compiled path --------------------------------------------

@pytest.mark.slow
def test_parity_fixture_compiled(parity_npz):
    """The MD17-size model with the reference's weights, compiled: its energies and forces to 1e-10;
    the perturbed weights are loaded into the same potential and reuse the same graph."""
    from .test_parity import reference_model, reference_state_dict

    Z = parity_npz
    potential = reference_model(Z).eval()
    for p in potential.parameters():
        p.requires_grad_(False)
    model = sc.CompiledPotential(potential, verbose=False)
    species = torch.from_numpy(Z["ethanol/h0"].argmax(-1))[None]
    x = torch.from_numpy(Z["ethanol/x"])[None]
    mask = torch.ones_like(species, dtype=torch.bool)
    for key, perturbed in (("ethanol/f64", False), ("ethanol/perturbed/f64", True)):
        potential.load_state_dict(reference_state_dict(Z, perturbed), strict=False)
        out = model(species, x, mask)  # scale 1, no shifts: per-atom energies are the backbone's outputs y
        np.testing.assert_allclose(out["energies"][0].numpy(), Z[f"{key}/y"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["energy"].item(), Z[f"{key}/E"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["forces"][0].numpy(), Z[f"{key}/F"], rtol=0, atol=1e-10)
    assert model.compiles == 1 and model.eager_reason is None


# --- AOTInductor -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_exported_package_loads_without_compiling(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny())
    out = tmp_path / "tiny.pt2"
    result = CliRunner().invoke(main, ["compile", str(ckpt), "--molecule", "ethanol", "--out", str(out)])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("a package must not compile"))
    potential = tiny()
    calc = SAKECalculator(str(out))
    assert calc.dtype == torch.float64 and calc.potential.atoms == 9
    for atoms in molecules("CH3CH2OH", "CH3OH"):  # methanol is padded to the package's 9 atoms
        atoms.calc = calc
        ref = eager(potential, batch(potential, [atoms]))
        assert atoms.get_potential_energy() == pytest.approx(ref["energy"].item(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"][0].numpy(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="float32"):
        SAKECalculator(str(out), dtype="float32")
    too_big = molecules("CH3CONH2")[0]  # 9 atoms fits; a 10-atom molecule does not
    too_big += ase.Atoms("H", positions=[[3.0, 3.0, 3.0]])
    with pytest.raises(Exception, match="compiled for"):
        calc.get_potential_energy(too_big)


def test_compile_command_refuses_bad_arguments(tmp_path):
    ckpt = str(save_checkpoint(tmp_path / "tiny.pt", tiny()))
    result = CliRunner().invoke(main, ["compile", ckpt, "--out", str(tmp_path / "x.pt2")])
    assert result.exit_code == 2 and "--molecule NAME or --atoms FILE" in result.output
    result = CliRunner().invoke(main, ["compile", ckpt, "--molecule", "ethanol", "--out", str(tmp_path / "x.zip")])
    assert result.exit_code == 1 and ".pt2" in result.output
    result = CliRunner().invoke(main, ["compile", ckpt, "--molecule", "CH3Cl", "--out", str(tmp_path / "x.pt2")])
    assert result.exit_code == 1 and "Cl" in result.output  # an element the model does not know


def test_inductor_options_from_the_environment(monkeypatch):
    """$SAKE_MD_INDUCTOR_OPTIONS adds to the defaults (an experiment knob); anything but a JSON object is refused."""
    from sake_md.compile import OPTIONS_ENV, default_options
    from sake_md.errors import ConfigError

    monkeypatch.setenv(OPTIONS_ENV, '{"triton.cudagraphs": true}')
    assert default_options(torch.device("cpu")) == {"cpp_wrapper": True, "triton.cudagraphs": True}
    assert default_options(torch.device("cuda")) == {"triton.cudagraphs": True}
    monkeypatch.setenv(OPTIONS_ENV, "cudagraphs")
    with pytest.raises(ConfigError, match="JSON object"):
        default_options(torch.device("cpu"))


def test_one_fall_back_rule_with_one_warning_text():
    """Inference, the training step and the stacked step all fall back through ``compiled_or_none``."""
    def broken():
        raise ValueError("boom\nsecond line")

    with pytest.warns(RuntimeWarning, match=r"^sake_md: cannot compile the thing \(ValueError: boom\); going on$"):
        assert sc.compiled_or_none(broken, "the thing", "going on") == (None, "ValueError: boom")
    assert sc.compiled_or_none(lambda: 7, "the thing", "going on") == (7, None)
