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

__all__ = ["N_BOOTSTRAP", "per_frame_terms", "statistics", "evaluate", "warn_unseen_compositions",
           "format_report", "write_extxyz", "parity_plot"]

N_BOOTSTRAP = 2000


def per_frame_terms(data: Dataset, energy: np.ndarray, forces: list[np.ndarray]) -> dict:
    """``predict.frame_terms`` of predictions against the labels of ``data``. Shapes (M,)."""
    return frame_terms(energy - data.energy, [f - ref for f, ref in zip(forces, data.forces, strict=True)],
                       data.n_atoms)


def statistics(terms: dict, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Each statistic in meV (or meV/Å) with a percentile bootstrap 95% interval over frames."""
    m = len(terms["one"])
    resample = np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, m))
    result = {}
    for name, (num, den, root) in STATISTICS.items():
        value = terms[num].sum() / terms[den].sum()
        boot = terms[num][resample].sum(1) / terms[den][resample].sum(1)
        if root:
            value, boot = np.sqrt(value), np.sqrt(boot)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        result[name] = {"value": 1e3 * float(value), "ci95": [1e3 * float(lo), 1e3 * float(hi)]}
    return result


def evaluate(checkpoint, data, batch_size: int = 64, device: str = "cpu", n_bootstrap: int = N_BOOTSTRAP,
             seed: int = 0, return_predictions: bool = False, loaded=None):
    """The error report of ``checkpoint`` on ``data`` (a ``DataSource`` or a path; optionally also the
    predictions). ``loaded``: the checkpoint already in memory, (potential, checkpoint dict), e.g. a run's best.pt
    before it is written."""
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
    stats = {k: v for k, v in statistics(per_frame_terms(data, energy, forces), n_bootstrap, seed).items()
             if has_forces or not k.startswith("force_")}  # a file of energies only: no force statistics
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
