"""``sake-md compare``: several potentials through the stability protocol; a table, JSON and plots."""

import json
from pathlib import Path

import numpy as np

from ..batch import check_structure
from ..checkpoint import load_checkpoint
from ..devices import resolve_device, resolve_dtype
from ..evaluate import warn_unseen_compositions
from ..plotting import pyplot, save
from .rdf import BINS, h_of_r
from .reference import read_reference
from .stability import PRESETS, StabilityResult, force_errors, run_stability

__all__ = ["model_names", "compare", "format_table", "write_outputs"]


def model_names(paths) -> list[str]:
    """The shortest trailing parts of the paths (without the suffix) that tell the models apart: file stems,
    or e.g. ``a/best`` and ``b/best`` for ``runs/a/best.pt`` and ``runs/b/best.pt``."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same file twice


def compare(checkpoints, reference, test=None, preset="mdsim-md17", runs=None, time_ps=None, seed=0,
            device="cpu", dtype=None, progress=False, compile="auto", state_dir=None, segment_ps=1.0,
            echo=None) -> tuple[list[StabilityResult], np.ndarray]:
    """Run the protocol for each checkpoint. Returns the results and the reference h(r) (500,).

    ``compile``: True, False or "auto" (compile when the run is long enough to repay it; ``SAKEForces``).
    With ``state_dir``, each model's run (of whole frames) is saved there every ``segment_ps`` and a second
    call with the same arguments resumes it (a killed 300 ps run loses at most one segment; the numbers equal
    an uninterrupted run's). ``echo(line)`` then reports each segment."""
    p = PRESETS[preset]
    ref = read_reference(reference)
    test_data = read_reference(test) if test else None
    start = test_data or ref
    device = resolve_device(device)
    loaded = [load_checkpoint(c, with_metadata=True) for c in checkpoints]  # all load and check before any run
    potentials = [potential for potential, _ in loaded]
    for path, (potential, meta) in zip(checkpoints, loaded, strict=True):
        check_structure(start.numbers, start.positions[0], potential.atomic_numbers,
                        label=f"the molecule of {start.source} (for {path})")
        warn_unseen_compositions(meta, start.dataset, str(path))
    results = []
    for name, potential in zip(model_names(checkpoints), potentials, strict=True):
        if dtype is not None:
            potential = potential.to(resolve_dtype(dtype))
        if state_dir is None or p.steps(time_ps) % p.frame_interval:  # shorter than a frame: nothing to save
            result = run_stability(potential, ref, start, p, runs or p.runs, time_ps, seed, device, name, progress,
                                   compile)
        else:
            result = _run_resumable(potential, ref, start, p, runs or p.runs, time_ps or p.time_ps, seed, device,
                                    name, compile, Path(state_dir) / f"{_file_name(name)}.pt", segment_ps, echo)
        if test_data is not None and test_data.forces is not None:
            result.force_mae_meV_A, result.force_rmse_meV_A = force_errors(potential, test_data, device)
        results.append(result)
    return results, h_of_r(ref.positions)


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _run_resumable(potential, ref, start, preset, runs, time_ps, seed, device, name, compile, state_path, segment_ps,
                   echo) -> StabilityResult:
    from .segments import SegmentedStability, run_segmented, saved_step

    # compile="auto" weighs the calls left: a resumed run near its end does not compile for the whole run
    run = SegmentedStability(potential, ref, start, preset, runs, seed, device, name, compile,
                             expected_calls=preset.steps(time_ps) - saved_step(state_path) + 1)
    if echo is not None and state_path.exists():
        echo(f"{name}: resuming from {state_path}")

    def report(r: SegmentedStability) -> None:
        if echo is not None:
            collapsed = sum(c is not None for c in r.monitor.collapse)
            echo(f"{name}: {r.step * preset.timestep_fs / 1000.0:g}/{time_ps:g} ps, {collapsed}/{runs} collapsed, "
                 f"{r.step / r.wall_s if r.wall_s else 0:.1f} steps/s")

    return run_segmented(run, [time_ps], segment_ps, state_path, report)[time_ps]


def format_table(results: list[StabilityResult], time_ps: float) -> str:
    header = (f"{'model':24s} {'stability (ps)':>20s} {'h(r) error':>10s} {'F MAE (meV/Å)':>14s} "
              f"{'steps/s':>9s} {'runs':>4s}")
    lines = [header, "-" * len(header)]
    for r in results:
        stab = f"{r.stability_mean_ps:.2f} ± {r.stability_std_ps:.2f} / {time_ps:g}"
        force = f"{r.force_mae_meV_A:.1f}" if r.force_mae_meV_A is not None else "-"
        lines.append(f"{r.model:24s} {stab:>20s} {r.hr_error:10.3f} {force:>14s} {r.steps_per_s:9.1f} "
                     f"{len(r.runs):4d}")
    lines.append(f"steps/s: steps of all runs together ({results[0].device}, {results[0].dtype})"
                 if results else "no models")
    return "\n".join(lines)


def write_outputs(results: list[StabilityResult], h_reference: np.ndarray, out, settings: dict) -> list[Path]:
    """``compare.json`` always; ``stability.png`` and ``hr.png`` when matplotlib is installed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.json"
    payload = {"settings": settings, "bins": BINS.tolist(), "hr_reference": h_reference.tolist(),
               "models": [r.to_dict() for r in results]}
    path.write_text(json.dumps(payload, indent=1, default=_json_default))
    written = [path]
    if pyplot() is None:
        return written
    written += [_plot_stability(results, out / "stability.png", settings["time_ps"]),
                _plot_hr(results, h_reference, out / "hr.png")]
    return written


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _plot_stability(results, path, time_ps):
    fig, ax = pyplot().subplots(figsize=(1.5 + 1.2 * len(results), 3.5))
    x = np.arange(len(results))
    ax.bar(x, [r.stability_mean_ps for r in results], yerr=[r.stability_std_ps for r in results], capsize=4)
    for i, r in enumerate(results):
        ax.scatter([i] * len(r.runs), [run.stability_ps for run in r.runs], color="k", s=10, zorder=3)
    ax.set_xticks(x, [r.model for r in results], rotation=20, ha="right")
    ax.set_ylabel("stability time (ps)")
    ax.set_ylim(0, time_ps * 1.05)
    return save(fig, path)


def _plot_hr(results, h_reference, path):
    centres = 0.5 * (BINS[1:] + BINS[:-1])
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot(centres, h_reference, "k", lw=2, label="reference")
    for r in results:
        ax.plot(centres, r.hr, lw=1, label=f"{r.model} (error {r.hr_error:.3f})")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("h(r) (1/Å)")
    ax.legend(fontsize=8)
    return save(fig, path)
