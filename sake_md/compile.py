"""Compiled inference: energy, per-atom energies and forces of a ``SAKEPotential`` as one compiled graph.

``_EnergyForces`` (``potential.predict`` with forces) is the one function; ``trace`` turns it, autograd's backward
pass included, into one FX graph of ATen ops (``make_fx``), and ``CompiledPotential`` compiles that graph with inductor
(``torch.compile(fullgraph=True, dynamic=False)``), one graph per (B, N, dtype, device, variant).

The parameters are graph inputs, not constants baked into the graph: the compiled code depends on the architecture and
the shapes only, so (a) it always uses the potential's current weights (a ``load_state_dict`` or a fine-tuning step
needs no recompile and can never leave stale weights in a compiled graph), and (b) torch's on-disk cache serves every
checkpoint of the same architecture, e.g. a retrained model starts warm. Baking them in buys nothing on CPU (inductor
does not fold weights without ``freezing``); the exported artifact (``sake_md.export``) does embed them.

Start-up cost: the first compile of a shape takes minutes on one CPU core (inductor writes and builds C++ kernels);
torch keeps the results in ``TORCHINDUCTOR_CACHE_DIR`` (default here ``~/.cache/sake_md/inductor``), so a later process
compiles the same shape in seconds. Each compile is announced on stderr with the time it is expected to take and the
time it took; the times are kept in ``~/.cache/sake_md/compile_times.json``. Without a working compiler, or when
compiling fails, the potential runs eagerly after one warning that says why.
"""

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .console import notify
from .errors import ConfigError
from .files import atomic_write
from .model import SAKEPotential

__all__ = ["AUTO_FACTOR", "COLD_COMPILE_S", "WARM_FRACTION", "graph_inputs", "graph_state", "trace",
           "cache_root", "use_persistent_cache", "compile_record_key", "recorded_compiles", "record_compile_s",
           "expected_compile_s", "compiler_unavailable", "compiled_or_none", "CompiledPotential", "OPTIONS_ENV",
           "default_options", "check_mode", "eager_call_s", "should_compile", "make_predictor"]

AUTO_FACTOR = 3.0  # "auto" compiles when the eager run would take this many times the expected compile
COLD_COMPILE_S = {"cpu": 150.0, "cuda": 90.0}  # first compile, MD17 model (CPU: measured on one core; CUDA: a guess)
WARM_FRACTION = 0.1  # a compile from torch's cache takes ~5-25 % of the first (146 s -> 8 s measured on one core)
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict]


class _EnergyForces(nn.Module):
    """The function that is compiled, ``potential.predict`` with forces as a tuple, as a module so that
    ``torch.func.functional_call`` can feed it the weights.

    Shape: species (B, N), positions (B, N, 3), mask (B, N) -> energy (B,) float64, energies (B, N)
    float64, forces (B, N, 3) in the model dtype."""

    def __init__(self, potential: SAKEPotential):
        super().__init__()
        self.potential = potential

    def forward(self, species, positions, mask):
        out = self.potential.predict(species, positions, mask, forces=True)
        return out["energy"], out["energies"], out["forces"]


def graph_inputs(potential: SAKEPotential) -> list[tuple[str, dict, str]]:
    """Where the traced graph's weight inputs live, in its order: (name, owning module's parameter or
    buffer dict, key). Reading ``d[key]`` at call time follows ``.to()``, ``load_state_dict`` and
    reassigned parameters, and costs ~100x less than walking the module tree on every call."""
    module = _EnergyForces(potential)
    slots = []
    for kind, named in (("_parameters", module.named_parameters()), ("_buffers", module.named_buffers())):
        for name, _ in named:
            owner, _, key = name.rpartition(".")
            slots.append((name, getattr(module.get_submodule(owner), kind), key))
    return slots


def graph_state(potential: SAKEPotential) -> dict[str, torch.Tensor]:
    """Parameters and buffers in the order the traced graph takes them (detached: no autograd outside)."""
    return {name: d[key].detach() for name, d, key in graph_inputs(potential)}


def trace(potential: SAKEPotential, species, positions, mask) -> torch.fx.GraphModule:
    """``_EnergyForces`` and its backward pass as one graph of ATen ops, for these shapes and dtypes. The graph's
    inputs are the values of ``graph_state(potential)``, then species, positions and mask."""
    from torch.fx.experimental.proxy_tensor import make_fx

    module = _EnergyForces(potential)
    names = list(graph_state(potential))

    def flat(*args):
        state = dict(zip(names, args[:len(names)], strict=True))
        return torch.func.functional_call(module, state, args[len(names):])

    with torch.enable_grad():
        return make_fx(flat, tracing_mode="fake")(*graph_state(potential).values(), species, positions, mask)


# --- the persistent cache and the announced compile times ----------------------------------------------
def cache_root() -> Path:
    """``$XDG_CACHE_HOME/sake_md`` or ``~/.cache/sake_md``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sake_md"


def use_persistent_cache() -> str:
    """Point torch's compile cache at ``cache_root()/inductor`` unless the user chose a place; make sure
    the FX graph and AOTAutograd caches are on. Returns the directory.

    torch writes its own default (``/tmp/torchinductor_$USER``, lost on reboot) into the environment
    the first time it asks for the cache, so that value counts as not chosen."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == _torch_default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch: its default is only used when nothing is set, as ours
        return None
    return os.path.abspath(default_cache_dir())


# Bumped when the traced graphs change form, so that compile times recorded for the old form do not pass for
# compiles from the cache of the new one (2: the energy scale and shift became graph inputs)
GRAPH_FORM = 2


def compile_record_key(potential: SAKEPotential, key: tuple) -> str:
    """What a compile's cost depends on: architecture, shapes, dtype, device, inductor options, torch, graph form."""
    text = json.dumps([potential.config.to_dict(), len(potential.atomic_numbers), [str(k) for k in key],
                       default_options(key[3]), torch.__version__, GRAPH_FORM], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _times_file() -> Path:
    return cache_root() / "compile_times.json"


def recorded_compiles(record_key: str) -> dict:
    """{"first": s, "cached": s}: the first compile of this key in any process, and the latest one after it
    (which torch's cache served), where recorded."""
    try:
        entry = json.loads(_times_file().read_text())[record_key]
        return {k: float(v) for k, v in entry.items() if k in ("first", "cached")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record_compile_s(record_key: str, seconds: float):
    """Remember a compile's duration (best effort: an unwritable cache only loses the estimate)."""
    path = _times_file()
    try:
        times = json.loads(path.read_text()) if path.exists() else {}
        entry = times.get(record_key) if isinstance(times.get(record_key), dict) else {}
        entry["cached" if "first" in entry else "first"] = round(seconds, 1)
        times[record_key] = entry
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(times, indent=0)))
    except (OSError, ValueError, TypeError, AttributeError):
        pass


def expected_compile_s(potential: SAKEPotential, key: tuple, cold: dict | None = None) -> tuple[float, str]:
    """(seconds, what the estimate rests on) for compiling ``key`` now.

    A shape compiled before comes from torch's cache: the last such compile's time if recorded, else ``WARM_FRACTION``
    of the first one's. A new shape: ``cold`` (default ``COLD_COMPILE_S``) for the device."""
    cold = COLD_COMPILE_S if cold is None else cold
    times = recorded_compiles(compile_record_key(potential, key))
    if "cached" in times:
        return times["cached"], "from torch's cache, as last time"
    if "first" in times:
        return WARM_FRACTION * times["first"], f"from torch's cache; the first compile took {times['first']:.0f} s"
    return cold.get(torch.device(key[3]).type, cold["cpu"]), "first compile of this shape"


# --- availability and fallback -------------------------------------------------------------------------
def compiler_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None when it should."""
    try:
        from torch import _dynamo

        if not _dynamo.is_dynamo_supported():
            return f"torch.compile does not support Python {sys.version.split()[0]} with torch {torch.__version__}"
    except Exception as e:  # an import error inside torch says the same
        return f"torch.compile is not usable: {type(e).__name__}: {e}"
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            return f"inductor needs a C++ compiler on CPU and none was found (tried $CXX={cxx}, g++, clang++)"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton on CUDA and it is not installed"
    return None


def compiled_or_none(build: Callable, what: str, then: str, device: torch.device | None = None):
    """The one compile-then-fall-back-to-eager rule: ``(build(), None)``, or ``(None, reason)`` after one warning
    "sake_md: cannot compile {what} (reason); {then}". ``build`` traces, compiles and calls a graph once
    (inductor compiles at the first call); ``device``: first check that a compiler exists for it."""
    reason = compiler_unavailable(device) if device is not None else None
    if reason is None:
        try:
            return build(), None
        except Exception as e:  # the tracer, dynamo, inductor, the C++ toolchain: many kinds of errors
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    warnings.warn(f"sake_md: cannot compile {what} ({reason}); {then}", RuntimeWarning, stacklevel=3)
    return None, reason


class CompiledPotential:
    """``potential.predict`` (with forces) compiled, one graph per (B, N, dtype, device, variant).

    Call it as ``predict``: ``(species (B, N), positions (B, N, 3), mask (B, N)) -> {"energy" (B,), "energies" (B, N),
    "forces" (B, N, 3)}``. The first call of a new shape or dtype traces and compiles (announced on stderr); later calls
    of that shape reuse the graph. If the compiler is missing, or tracing, compiling or the first call fails, it warns
    once and evaluates eagerly from then on (``compiled_or_none``). ``compiles`` counts the graphs compiled;
    ``eager_reason`` says why it fell back (None if it did not)."""

    def __init__(self, potential: SAKEPotential, verbose: bool = True):
        self.potential, self.verbose = potential, verbose
        self.graphs: dict[tuple, Callable] = {}
        self._inputs = graph_inputs(potential)
        self.compiles, self.eager_reason = 0, None

    def key(self, positions: torch.Tensor) -> tuple:
        B, N = positions.shape[:2]
        return B, N, self.potential.dtype, positions.device, self.potential.config.variant

    def __call__(self, species, positions, mask) -> dict:
        positions = positions.detach().to(self.potential.dtype)
        if self.eager_reason is None:
            key = self.key(positions)
            state = [d[k] for _, d, k in self._inputs]  # under no_grad: no autograd even if they require grad
            graph = self.graphs.get(key)
            if graph is None:
                graph, self.eager_reason = compiled_or_none(lambda: self._compile(key, state, species, positions, mask),
                                                            "the potential", "evaluating it eagerly (correct, but "
                                                            "slower)", positions.device)
            if graph is not None:
                with torch.no_grad():
                    energy, energies, forces = graph(*state, species, positions, mask)
                return {"energy": energy, "energies": energies, "forces": forces}
        return _eager(self.potential, species, positions, mask)

    def _compile(self, key, state, species, positions, mask):
        cache = use_persistent_cache()
        seconds, basis = expected_compile_s(self.potential, key)
        B, N, dtype, device, variant = key
        what = f"{variant} energy+forces for {B} × {N} atoms ({str(dtype).removeprefix('torch.')}, {device})"
        later = "" if "cache" in basis else "; a later process reuses torch's cache and takes a fraction of it"
        notify(f"compiling {what}: expect ~{seconds:.0f} s ({basis}{later}; cache {cache})", self.verbose)
        start = time.perf_counter()
        graph = torch.compile(trace(self.potential, species, positions, mask), fullgraph=True, dynamic=False,
                              options=default_options(device))
        with torch.no_grad():
            graph(*state, species, positions, mask)  # inductor compiles lazily, at the first call
        elapsed = time.perf_counter() - start
        self.graphs[key] = graph
        self.compiles += 1
        record_compile_s(compile_record_key(self.potential, key), elapsed)
        notify(f"compiled in {elapsed:.1f} s", self.verbose)
        return graph


OPTIONS_ENV = "SAKE_MD_INDUCTOR_OPTIONS"


def default_options(device: torch.device) -> dict:
    """Inductor options. On CPU a C++ wrapper calls the kernels: no Python between ~100 small kernels (faster per
    call for small molecules than the Python wrapper, and quicker to build; docs/speed.md).

    ``$SAKE_MD_INDUCTOR_OPTIONS`` (a JSON object, e.g. ``{"triton.cudagraphs": true}``) adds to or replaces
    these, for experiments on hardware where the defaults are not measured (CUDA: the Python wrapper's
    launches dominate the stacked training step)."""
    options = {"cpp_wrapper": True} if torch.device(device).type == "cpu" else {}
    if extra := os.environ.get(OPTIONS_ENV):
        try:
            options.update(json.loads(extra))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"${OPTIONS_ENV} must be a JSON object of inductor options, got {extra!r}") from e
    return options


# --- choosing: True, False or "auto" --------------------------------------------------------------------
def check_mode(mode) -> bool | str:
    if mode is True or mode is False or mode == "auto":
        return mode
    raise ConfigError(f"compile must be True, False or 'auto', got {mode!r}")


def eager_call_s(potential: SAKEPotential, species, positions, mask, repeats: int = 3) -> float:
    """Seconds of one eager energy+forces call (the best of ``repeats`` after one warm-up call)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _eager(potential, species, positions, mask)
        if positions.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def should_compile(calls: int | None, call_s: float, compile_s: float, factor: float = AUTO_FACTOR) -> bool:
    """The "auto" rule: compile when the run's eager time exceeds ``factor`` × the expected compile time.

    ``factor`` = 3 leaves room for a compile that takes longer than expected and does not bank on the compiled speed-up
    (2-5x here); an unknown number of calls never compiles."""
    return calls is not None and calls * call_s > factor * compile_s


def make_predictor(potential: SAKEPotential, mode, species, positions, mask, calls: int | None = None,
                   verbose: bool = True) -> Predictor:
    """``potential.predict`` with forces, compiled or not as ``mode`` (True, False, "auto") says.

    "auto" times an eager call on this batch and applies ``should_compile`` to ``calls`` such calls; a decision to
    compile is announced on stderr with its numbers (staying eager costs nothing: silent)."""
    mode = check_mode(mode)
    if mode == "auto" and calls is None:  # nothing to repay a compile against
        mode = False
    if mode == "auto":
        key = (*positions.shape[:2], potential.dtype, positions.device, potential.config.variant)
        call_s = eager_call_s(potential, species, positions, mask)
        compile_s, basis = expected_compile_s(potential, key)
        mode = should_compile(calls, call_s, compile_s)
        notify(f"compile=auto: {calls} calls × {call_s * 1e3:.1f} ms eager vs ~{compile_s:.0f} s to compile "
               f"({basis}) -> compiling (rule: eager time > {AUTO_FACTOR:g} × compile time)", verbose and mode)
    if mode:
        return CompiledPotential(potential, verbose)
    return lambda species, positions, mask: _eager(potential, species, positions, mask)


def _eager(potential, species, positions, mask) -> dict:
    with torch.enable_grad():
        return potential.predict(species, positions.detach().to(potential.dtype), mask, forces=True)
