"""The stability protocol (``stability.py``) in resumable segments, for runs that must survive being killed.

The replica state (positions, momenta, forces, thermostat), the monitor's bond checks and h(r) counts,
the step count and the time spent are saved atomically after every segment; a resumed run continues
from the last saved segment and gives the same numbers as an uninterrupted one (Nosé–Hoover has no
random numbers after the initial momenta). Results are taken at each of several horizons (e.g. 10 and
50 ps of one 50 ps run): the result at a horizon is exactly what a run of that length would give.
"""

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_torch_save
from ..errors import InputError
from ..model import SAKEPotential
from .reference import MoleculeFrames
from .replicas import simulate
from .stability import RunRecord, StabilityPreset, StabilityResult, _Monitor, _result, protocol_setup

__all__ = ["STATE_VERSION", "SegmentedStability", "atomic_torch_save", "run_segmented"]

STATE_VERSION = 1


def weights_digest(module: torch.nn.Module) -> str:
    """A fingerprint of a module's weights (names, dtypes and values): a saved run continues only with them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class SegmentedStability:
    """One potential's protocol run, advanced segment by segment; ``save``/``load`` hold its whole state."""

    def __init__(self, potential: SAKEPotential, reference: MoleculeFrames, start: MoleculeFrames,
                 preset: StabilityPreset, runs: int, seed: int = 0, device="cpu", name: str = "model",
                 compile=False, expected_calls: int | None = None):
        self.frames, self.model, self.state, self.integrator, criteria = protocol_setup(
            potential, reference, start, preset, runs, seed, device, compile, expected_calls)
        self.reference, self.preset, self.device, self.name = reference, preset, device, name
        self.dtype = potential.dtype
        self.monitor = _Monitor(criteria)
        self.step, self.wall_s, self.stopped = 0, 0.0, False
        self.identity = {"frames": self.frames, "runs": runs, "seed": seed, "preset": preset.name,
                         "weights": weights_digest(potential)}
        self.trajectory: list[torch.Tensor] = []  # positions (R, N, 3) float32 at every observed frame
        self.trajectory_steps: list[int] = []

    def advance(self, until_step: int) -> None:
        """Integrate to ``until_step`` (a multiple of the frame interval), or until every run has collapsed."""
        if until_step % self.preset.frame_interval:
            raise InputError(f"segments must end on a frame: step {until_step} is not a multiple of "
                             f"{self.preset.frame_interval}")
        if self.stopped or until_step <= self.step:
            return
        offset = self.step

        def observe(k, state):  # a resumed segment's step 0 is the frame the last segment ended on
            if k == 0 and offset > 0:
                return None
            self.trajectory.append(state.positions.detach().to(device="cpu", dtype=torch.float32).clone())
            self.trajectory_steps.append(offset + k)
            return self.monitor(offset + k, state)

        t0 = time.perf_counter()
        done = simulate(self.state, self.integrator, self.model, until_step - offset, self.preset.frame_interval,
                        observe)
        self.wall_s += time.perf_counter() - t0
        self.stopped = done < until_step - offset
        self.step = offset + done

    def result(self) -> StabilityResult:
        return _result(self.name, self.monitor, self.frames, self.reference, self.preset, self.step, self.wall_s,
                       self.device, self.dtype)

    def state_dict(self) -> dict:
        s, m = self.state, self.monitor
        return {"version": STATE_VERSION, "identity": self.identity, "step": self.step, "wall_s": self.wall_s,
                "stopped": self.stopped,
                "replicas": {"positions": s.positions, "momenta": s.momenta, "forces": s.forces,
                             "energy": s.energy, "thermostat": dict(s.thermostat)},
                "monitor": {"counts": torch.from_numpy(m.counts), "last_good": list(m.last_good),
                            "frames": list(m.frames), "collapse": [list(c) if c else None for c in m.collapse],
                            "last_step": m.last_step},
                "trajectory": self.trajectory_tensor(), "trajectory_steps": torch.tensor(self.trajectory_steps)}

    def trajectory_tensor(self) -> torch.Tensor:
        """Positions of every observed frame (every ``frame_interval`` steps, from step 0), float32.
        Shape: (F, R, N, 3)."""
        return torch.stack(self.trajectory) if self.trajectory else torch.zeros(0, *self.state.positions.shape)

    def load_state_dict(self, data: dict) -> None:
        # a state saved before the fingerprint was kept continues with any weights
        saved = {"weights": self.identity["weights"], **(data.get("identity") or {})}
        if saved["weights"] != self.identity["weights"]:
            raise InputError("the saved MD state was run with another potential (its weights differ from "
                             f"{self.name}'s): resume it with the same checkpoint, or give another --out")
        if data.get("version") != STATE_VERSION or saved != self.identity:
            raise InputError(f"the saved MD state belongs to another run ({data.get('identity')}, "
                             f"not {self.identity}); delete it to start again")
        self.step, self.wall_s, self.stopped = data["step"], data["wall_s"], data["stopped"]
        r, device = data["replicas"], self.state.positions.device
        for name in ("positions", "momenta", "forces", "energy"):
            setattr(self.state, name, None if r[name] is None else r[name].to(device))
        self.state.thermostat = {k: v.to(device) for k, v in r["thermostat"].items()}
        m = data["monitor"]
        self.monitor.counts = m["counts"].numpy().copy()
        self.monitor.last_good, self.monitor.frames = list(m["last_good"]), list(m["frames"])
        self.monitor.collapse = [tuple(c) if c else None for c in m["collapse"]]
        self.monitor.last_step = m["last_step"]
        frames = data.get("trajectory")  # absent in states saved before frames were kept
        self.trajectory = [] if frames is None else list(frames.unbind(0))
        self.trajectory_steps = [] if frames is None else data["trajectory_steps"].tolist()

    def save_frames(self, path) -> Path:
        """The observed frames as npz: positions (F, R, N, 3) Å float32, steps (F,), time_ps (F,), numbers (N,),
        start_frames (R,), collapse_step (R,; -1 = none), for post-hoc analysis (e.g. committee deviations)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        steps = np.asarray(self.trajectory_steps, dtype=np.int64)
        collapse = [-1 if c is None else c[0] for c in self.monitor.collapse]
        np.savez_compressed(path, positions=self.trajectory_tensor().numpy(), steps=steps,
                            time_ps=steps * self.preset.timestep_fs / 1000.0,
                            numbers=np.asarray(self.reference.numbers), start_frames=np.asarray(self.frames),
                            collapse_step=np.asarray(collapse))
        return path


def saved_step(state_path) -> int:
    """The step a run saved at ``state_path`` stopped at (0 without a saved run): its calls left to make."""
    if not Path(state_path).exists():
        return 0
    return int(torch.load(state_path, map_location="cpu", weights_only=True)["run"]["step"])


def run_segmented(run: SegmentedStability, horizons_ps, segment_ps: float, state_path,
                  on_segment: Callable[[SegmentedStability], None] | None = None) -> dict[float, StabilityResult]:
    """Advance ``run`` to the longest horizon in segments of ``segment_ps``, saving to ``state_path`` after each and
    resuming from it when it exists (a killed run loses at most the segment in progress). Returns the result at each
    horizon (ps -> result); ``on_segment(run)`` is called after each save."""
    preset, interval = run.preset, run.preset.frame_interval
    segment = max(interval, int(round(preset.steps(segment_ps) / interval)) * interval)
    stops = {}
    for h in sorted(horizons_ps):
        steps = preset.steps(h)
        if steps % interval:
            raise InputError(f"a horizon of {h} ps is {steps} steps, not a multiple of the frame interval "
                             f"({interval} steps)")
        stops[steps] = h
    state_path = Path(state_path)
    results: dict[float, StabilityResult] = {}
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        run.load_state_dict(saved["run"])
        results = {float(h): _result_from(run, r) for h, r in saved["results"].items()}
    while len(results) < len(stops):
        target = min([s for s in stops if s > run.step] + [run.step + segment])
        run.advance(target)
        for steps, h in stops.items():
            if h not in results and (run.step >= steps or run.stopped):
                results[h] = run.result()
        atomic_torch_save({"run": run.state_dict(),
                           "results": {str(h): _result_state(r) for h, r in results.items()}}, state_path)
        if on_segment is not None:
            on_segment(run)
    return {h: results[h] for h in sorted(results)}


def _result_state(result: StabilityResult) -> dict:
    """What a horizon's result needs beyond the run: its runs, h(r), steps and time (weights_only-safe)."""
    d = result.to_dict()
    return {"runs": d["runs"], "hr": torch.tensor(np.asarray(result.hr)), "steps": result.steps,
            "wall_s": result.wall_s}


def _result_from(run: SegmentedStability, saved: dict) -> StabilityResult:
    return StabilityResult(run.name, [RunRecord(**r) for r in saved["runs"]], saved["hr"].numpy(), saved["steps"],
                           saved["wall_s"], str(run.device), str(run.dtype).removeprefix("torch."))
