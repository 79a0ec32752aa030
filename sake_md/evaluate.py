"""Errors of a potential on a labelled data file, with bootstrap 95% intervals over frames.

Energy MAE/RMSE in meV and meV/atom (per frame: |ΔE| / N), force MAE/RMSE in meV/Å over all
force components. Predictions come from ``sake_md.predict.predict`` (batches of the dataset straight
into the model, no ASE calculator), errors from its ``frame_terms`` and ``STATISTICS``.
"""

from pathlib import Path

import numpy as np

from .checkpoint import trained_compositions
from .console import warn
from .data import Dataset, as_source
from .plotting import pyplot, save
from .predict import STATISTICS, frame_terms, predict

__all__ = ["N_BOOTSTRAP", "per_frame_terms", "statistics", "paired_statistics", "evaluate", "warn_unseen_compositions",
           "format_report", "write_extxyz", "parity_plot"]

N_BOOTSTRAP = 2000


def per_frame_terms(data: Dataset, energy: np.ndarray, forces: list[np.ndarray]) -> dict:
    """``predict.frame_terms`` of predictions against the labels of ``data``. Shapes (M,)."""
    return frame_terms(energy - data.energy, [f - ref for f, ref in zip(forces, data.forces, strict=True)],
                       data.n_atoms)


def _resampled(terms: dict, resample: np.ndarray) -> dict:
    """Each statistic (eV units) on all frames and on each bootstrap resample: name -> (value, (B,) values).
    ``resample`` (B, M): frame indices."""
    result = {}
    for name, (num, den, root) in STATISTICS.items():
        value = terms[num].sum() / terms[den].sum()
        boot = terms[num][resample].sum(1) / terms[den][resample].sum(1)
        result[name] = (np.sqrt(value), np.sqrt(boot)) if root else (value, boot)
    return result


def _interval(boot: np.ndarray) -> list[float]:
    return [1e3 * float(v) for v in np.percentile(boot, [2.5, 97.5])]


def statistics(terms: dict, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Each statistic in meV (or meV/Å) with a percentile bootstrap 95% interval over frames."""
    m = len(terms["one"])
    resample = np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, m))
    return {name: {"value": 1e3 * float(value), "ci95": _interval(boot)}
            for name, (value, boot) in _resampled(terms, resample).items()}


def paired_statistics(terms: dict, other: dict, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Each statistic of ``terms`` minus the same of ``other`` (two potentials' ``per_frame_terms`` on the same
    frames), in meV (meV/Å), with a paired percentile bootstrap 95% interval: both drawn on the same resampled
    frames, so what the frames share (hard frames are hard for both) cancels, and the interval is narrower than the
    two separate intervals suggest. An interval that excludes 0: a difference these frames resolve."""
    m = len(terms["one"])
    if len(other["one"]) != m:
        raise ValueError(f"paired statistics need the same frames, got {m} and {len(other['one'])}")
    resample = np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, m))
    mine, theirs = _resampled(terms, resample), _resampled(other, resample)
    return {name: {"value": 1e3 * float(value - theirs[name][0]), "ci95": _interval(boot - theirs[name][1]),
                   "other": 1e3 * float(theirs[name][0])}
            for name, (value, boot) in mine.items()}


def evaluate(checkpoint, data, batch_size: int = 64, device: str = "cpu", n_bootstrap: int = N_BOOTSTRAP,
             seed: int = 0, return_predictions: bool = False, loaded=None, against=None):
    """The error report of ``checkpoint`` on ``data`` (a ``DataSource`` or a path; optionally also the
    predictions). ``loaded``: the checkpoint already in memory, (potential, checkpoint dict), e.g. a run's best.pt
    before it is written. ``against``: another checkpoint; the report's "against" holds each statistic of
    ``checkpoint`` minus its on the same frames (``paired_statistics``)."""
    from .checkpoint import load_checkpoint
    from .inference import inference_potential
    from .model import count_parameters

    potential, meta = loaded or load_checkpoint(checkpoint, with_metadata=True)
    source = as_source(data)
    data = source.read(labelled="energy")
    warn_unseen_compositions(meta, data, str(checkpoint))
    potential = inference_potential(potential, device)
    energy, forces = predict(potential, data, batch_size)
    has_forces = all(np.isfinite(f).all() for f in data.forces)
    shown = lambda stats: {k: v for k, v in stats.items()  # noqa: E731
                           if has_forces or not k.startswith("force_")}  # energies only: no force statistics
    terms = per_frame_terms(data, energy, forces)
    stats = shown(statistics(terms, n_bootstrap, seed))
    if against is not None:
        other = inference_potential(load_checkpoint(against), device)
        paired = paired_statistics(terms, per_frame_terms(data, *predict(other, data, batch_size)), n_bootstrap, seed)
        stats["against"] = {"checkpoint": str(against), "difference": "this minus against, paired over frames",
                            **shown(paired)}
    report = {"checkpoint": str(checkpoint), "data": source.path, "frames": len(data),
              "atoms": int(data.n_atoms.sum()), "variant": meta.get("variant", meta["config"]["variant"]),
              "parameters": count_parameters(potential), "dtype": meta.get("dtype"),
              "bootstrap": {"resamples": n_bootstrap, "seed": seed, "interval": "percentile 95% over frames"},
              "forces": "labelled" if has_forces else "absent from the file: energy errors only", **stats}
    return (report, data, energy, forces) if return_predictions else report


def warn_unseen_compositions(meta: dict, data: Dataset, label: str) -> bool:
    """Warn once (stderr) when no frame of ``data`` has a composition of the checkpoint's training data (e.g. an
    ethanol potential on malonaldehyde: same elements, another molecule). A transfer test is legitimate, so
    only a warning. Returns whether it warned; silent when the training compositions are not recorded."""
    trained = trained_compositions(meta)
    if not trained or (seen := set(data.compositions)) & trained:
        return False
    from ase.data import chemical_symbols
    from ase.formula import Formula

    name = lambda comp: Formula("".join(f"{chemical_symbols[z]}{c}" for z, c in comp)).format("hill")  # noqa: E731
    warn(f"{label} was trained on {', '.join(sorted(map(name, trained)))}; no frame of {data.source} has that "
         f"composition ({', '.join(sorted(map(name, seen))[:5])}): expect large errors (a transfer test, not a "
         "test error)")
    return True


def format_report(report: dict) -> str:
    """A readable table."""
    lines = [f"checkpoint  {report['checkpoint']}", f"data        {report['data']}",
             f"frames      {report['frames']}   variant {report['variant']}   parameters {report['parameters']}",
             *([f"forces      {report['forces']}"] if report.get("forces", "labelled") != "labelled" else []),
             "", f"{'quantity':26s} {'value':>10s}   95% interval"]
    for name in (n for n in STATISTICS if n in report):
        s = report[name]
        lines.append(f"{name:26s} {s['value']:10.3f}   [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
    if (paired := report.get("against")) is not None:
        lines += ["", f"against     {paired['checkpoint']} (the same frames)",
                  f"{'quantity':26s} {'against':>10s} {'difference':>11s}   paired 95% interval"]
        for name in (n for n in STATISTICS if n in paired):
            s = paired[name]
            lines.append(f"{name:26s} {s['other']:10.3f} {s['value']:+11.3f}   [{s['ci95'][0]:+.3f}, "
                         f"{s['ci95'][1]:+.3f}]")
    return "\n".join(lines)


def write_extxyz(path, data: Dataset, energy: np.ndarray, forces: list[np.ndarray]) -> Path:
    """Frames with ref_energy/pred_energy (eV) in info and ref_forces/pred_forces (eV/Å) in arrays."""
    import ase.io

    frames = data.to_atoms()
    for atoms, e, f in zip(frames, energy, forces, strict=True):
        ref, atoms.calc = atoms.calc.results, None  # the labels are written under their ref_ names only
        atoms.info.update(ref_energy=ref["energy"], pred_energy=float(e))
        atoms.arrays["ref_forces"], atoms.arrays["pred_forces"] = ref["forces"], np.asarray(f)
    ase.io.write(path, frames, format="extxyz")
    return Path(path)


def parity_plot(path, data: Dataset, energy: np.ndarray, forces: list[np.ndarray], report: dict) -> Path | None:
    """Energy (relative to the reference mean) and force-component parity; None without matplotlib."""
    if (plt := pyplot()) is None:
        return None
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(9, 4.2))
    shift = data.energy.mean()
    _parity(ax_e, data.energy - shift, energy - shift, "energy − mean (eV)",
            f"MAE {report['energy_mae_meV']['value']:.2f} meV")
    _parity(ax_f, np.concatenate([f.ravel() for f in data.forces]), np.concatenate([f.ravel() for f in forces]),
            "force component (eV/Å)", f"MAE {report['force_mae_meV_A']['value']:.2f} meV/Å")
    fig.suptitle(f"{report['variant']} on {Path(report['data']).name} ({report['frames']} frames)")
    return save(fig, path)


def _parity(ax, ref, pred, label, title):
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
    ax.scatter(ref, pred, s=3, alpha=0.5)
    ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}", title=title)
