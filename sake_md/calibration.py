"""A committee on a labelled data file: the errors of its mean, and how its predicted deviation relates to the actual
error (calibration).

Forces, per atom i of every frame: the predicted deviation σ_F,i (``sake_md.committee``, the norm over x, y, z) against
the actual error of the mean |ΔF_i| = |F̄_i − F_i^ref|. Atoms are split into bins of equal count by σ_F (quantile bins);
per bin, the RMS of σ_F and the RMSE of |ΔF|. A calibrated committee has RMSE ≈ RMS σ in every bin (for Gaussian errors
of variance σ²/3 per component, E|ΔF|² = σ²); a ratio above 1 means it is over-confident there. Spearman's ρ(σ, |ΔF|)
says whether a larger deviation ranks with a larger error. Energies likewise, per frame: σ_E against |Ē − E^ref|.
"""

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from .data import as_source
from .evaluate import N_BOOTSTRAP, format_report, per_frame_terms, statistics
from .plotting import pyplot, save
from .predict import STATISTICS, statistic

__all__ = ["N_BINS", "binned_calibration", "committee_arrays", "member_errors", "evaluate_committee",
           "format_committee_report", "calibration_plot"]

N_BINS = 10


def binned_calibration(sigma: np.ndarray, error: np.ndarray, bins: int = N_BINS) -> dict:
    """Quantile bins of ``sigma`` with the RMS of sigma and the RMSE of ``error`` in each, in the inputs'
    unit; plus Spearman's ρ and the overall ratio RMSE / RMS σ. Shapes: sigma, error (A,)."""
    order = np.argsort(sigma, kind="stable")
    rows = []
    for idx in np.array_split(order, min(bins, len(order))):
        s, e = sigma[idx], error[idx]
        rms, rmse = float(np.sqrt(np.mean(s ** 2))), float(np.sqrt(np.mean(e ** 2)))
        rows.append({"count": len(idx), "std_min": float(s.min()), "std_max": float(s.max()), "std_rms": rms,
                     "error_rmse": rmse, "ratio": rmse / rms if rms > 0 else float("inf")})
    rho = spearmanr(sigma, error).statistic if len(sigma) > 2 and np.ptp(sigma) > 0 else float("nan")
    overall = np.sqrt(np.mean(error ** 2) / np.mean(sigma ** 2)) if np.any(sigma > 0) else float("inf")
    return {"bins": rows, "spearman": float(rho), "ratio": float(overall)}


def committee_arrays(data, predictions: list[dict]) -> dict:
    """Per-atom σ_F and |ΔF| (A,) over all frames, per-frame σ_E and |ΔE| (M,), in eV and eV/Å."""
    return {"force_std": np.concatenate([p["forces_std"] for p in predictions]),
            "force_error": np.concatenate([np.linalg.norm(p["forces"] - f, axis=-1)
                                           for p, f in zip(predictions, data.forces, strict=True)]),
            "energy_std": np.array([p["energy_std"] for p in predictions]),
            "energy_error": np.abs(np.array([p["energy"] for p in predictions]) - data.energy)}


def member_errors(data, predictions: list[dict], labels: list[str]) -> list[dict]:
    """Each member's own energy and force MAE/RMSE in meV (meV/Å), without intervals."""
    rows = []
    for m, label in enumerate(labels):
        energy = np.array([p["committee_energy"][m] for p in predictions])
        terms = per_frame_terms(data, energy, [p["committee_forces"][m] for p in predictions])
        totals = {k: float(v.sum()) for k, v in terms.items()}
        rows.append({"checkpoint": label, **{name: statistic(totals, name) for name in STATISTICS}})
    return rows


def evaluate_committee(checkpoints, data, batch_size: int = 64, device: str = "cpu", bins: int = N_BINS,
                       n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, return_predictions: bool = False):
    """The report of a committee on ``data`` (a ``DataSource`` or a path): errors of the mean (as ``evaluate``),
    each member's errors and the calibration of its deviation (meV, meV/Å). Optionally also the data, the mean
    energies (M,), mean forces [(N_m, 3)] and the arrays of ``committee_arrays``."""
    from .committee import CommitteeCalculator, predict_dataset
    from .model import count_parameters

    calculator = CommitteeCalculator(list(checkpoints), device=device)  # loads and checks the members
    source = as_source(data)
    data = source.read()
    predictions = predict_dataset(calculator.committee, data, batch_size)
    energy = np.array([p["energy"] for p in predictions])
    forces = [p["forces"] for p in predictions]
    arrays = committee_arrays(data, predictions)
    to_meV = {k: 1e3 * v for k, v in arrays.items()}
    variants = sorted({p.config.variant for p in calculator.potentials})
    report = {"checkpoint": ", ".join(calculator.labels), "members": len(calculator.labels),
              "data": source.path, "frames": len(data), "atoms": int(data.n_atoms.sum()),
              "variant": f"committee of {len(calculator.labels)} ({', '.join(variants)})",
              "parameters": sum(count_parameters(p) for p in calculator.potentials),
              "bootstrap": {"resamples": n_bootstrap, "seed": seed, "interval": "percentile 95% over frames"},
              **statistics(per_frame_terms(data, energy, forces), n_bootstrap, seed),
              "member_errors": member_errors(data, predictions, calculator.labels),
              "calibration": {
                  "definition": "per-atom force std sigma_F = sqrt(mean_m |F_m - F_mean|^2) vs |F_mean - F_ref|; "
                                "per-frame energy std vs |E_mean - E_ref|; quantile bins of the std; meV, meV/A",
                  "forces": binned_calibration(to_meV["force_std"], to_meV["force_error"], bins),
                  "energy": binned_calibration(to_meV["energy_std"], to_meV["energy_error"], bins)}}
    return (report, data, energy, forces, arrays) if return_predictions else report


def format_committee_report(report: dict) -> str:
    """The error table of the mean, each member's errors and the calibration tables."""
    lines = [format_report(report), "", f"{'member':40s} {'force MAE':>10s} {'force RMSE':>11s} {'E MAE':>9s}"]
    for row in report["member_errors"]:
        lines.append(f"{_short(row['checkpoint']):40s} {row['force_mae_meV_A']:10.3f} "
                     f"{row['force_rmse_meV_A']:11.3f} {row['energy_mae_meV']:9.3f}")
    for key, what, unit in (("forces", "per-atom force deviation σ_F against |ΔF| of the mean", "meV/Å"),
                            ("energy", "per-frame energy deviation σ_E against |ΔE| of the mean", "meV")):
        cal = report["calibration"][key]
        lines += ["", f"calibration: {what} ({unit}; calibrated: RMSE ≈ RMS σ)",
                  f"{'bin':>4s} {'count':>7s} {'σ range':>21s} {'RMS σ':>10s} {'RMSE':>10s} {'ratio':>7s}"]
        for k, b in enumerate(cal["bins"]):
            span = f"{b['std_min']:.4g}–{b['std_max']:.4g}"
            lines.append(f"{k + 1:4d} {b['count']:7d} {span:>21s} {b['std_rms']:10.4g} {b['error_rmse']:10.4g} "
                         f"{b['ratio']:7.3g}")
        lines.append(f"Spearman ρ = {cal['spearman']:.3f}; overall RMSE / RMS σ = {cal['ratio']:.3g}")
    return "\n".join(lines)


def calibration_plot(path, report: dict, arrays: dict, max_points: int = 20000, seed: int = 0) -> Path | None:
    """Per-atom σ_F against |ΔF| (a sample of atoms), the binned RMSE against RMS σ and the diagonal,
    log-log, in meV/Å; None without matplotlib."""
    if (plt := pyplot()) is None:
        return None
    sigma, error = 1e3 * arrays["force_std"], 1e3 * arrays["force_error"]
    keep = np.random.default_rng(seed).permutation(len(sigma))[:max_points]
    cal = report["calibration"]["forces"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(sigma[keep], error[keep], s=2, alpha=0.2, color="0.5", label="atoms")
    ax.plot([b["std_rms"] for b in cal["bins"]], [b["error_rmse"] for b in cal["bins"]], "o-",
            label="quantile bins (RMS σ, RMSE)")
    positive = np.concatenate([sigma[sigma > 0], error[error > 0]])
    if positive.size:
        lo, hi = positive.min(), positive.max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=1, label="calibrated")
        ax.set(xscale="log", yscale="log")
    ax.set(xlabel="committee force deviation σ_F (meV/Å)", ylabel="error of the mean |ΔF| (meV/Å)")
    ax.set_title(f"{report['variant']}\nSpearman ρ = {cal['spearman']:.2f}, RMSE / RMS σ = {cal['ratio']:.2g}",
                 fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)


def _short(path: str, width: int = 40) -> str:
    """The path's last parts that fit ``width`` (members are often ``run_x/best.pt``, ``run_y/best.pt``)."""
    parts = Path(path).parts
    for k in range(len(parts)):
        text = str(Path(*parts[k:]))
        if len(text) <= width:
            return text
    return "…" + str(path)[-(width - 1):]
