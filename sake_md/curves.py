"""Learning curves: validation errors against training seconds, for several runs on one figure.

Reads each run folder's ``metrics.jsonl`` (one row per epoch with ``seconds``, the epoch's wall time on the
run's own core, i.e. its CPU time when the run had a core to itself).
"""

import json
from pathlib import Path

import numpy as np

from .errors import SakeMDError
from .plotting import pyplot, save

CURVE_KEYS = ("val_force_mae_meV_A", "val_energy_mae_meV")


def read_curve(run) -> dict:
    """Cumulative seconds (E,) and the validation errors (E,) of one run folder."""
    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SakeMDError(f"{run} holds no metrics.jsonl (is it a `sake-md train --out` folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SakeMDError(f"{path} is empty: the run has not finished an epoch yet")
    return {"name": run.name, "seconds": np.cumsum([r["seconds"] for r in rows]),
            **{key: np.array([r[key] for r in rows]) for key in ("epoch", *CURVE_KEYS)}}


def summary_table(curves: list[dict]) -> str:
    """One line per run: epochs, seconds, best and last validation errors."""
    lines = [f"{'run':28s} {'epochs':>6s} {'seconds':>8s} {'best val F MAE':>15s} {'last val F MAE':>15s} "
             f"{'last val E MAE':>15s}"]
    for c in curves:
        lines.append(f"{c['name']:28s} {c['epoch'][-1]:6d} {c['seconds'][-1]:8.0f} "
                     f"{c['val_force_mae_meV_A'].min():15.2f} {c['val_force_mae_meV_A'][-1]:15.2f} "
                     f"{c['val_energy_mae_meV'][-1]:15.2f}")
    return "\n".join(lines)


def plot_curves(curves: list[dict], path) -> Path | None:
    """Validation force and energy MAE (log scale) against training minutes; None without matplotlib."""
    if (plt := pyplot()) is None:
        return None
    fig, (ax_f, ax_e) = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, what in zip((ax_f, ax_e), CURVE_KEYS, ("force MAE (meV/Å)", "energy MAE (meV)"), strict=True):
        for c in curves:
            ax.plot(c["seconds"] / 60.0, c[key], label=c["name"])
        ax.set(xlabel="training time (min, one core)", ylabel=f"validation {what}", yscale="log")
        ax.grid(alpha=0.3, which="both")
    ax_f.legend(fontsize=8)
    return save(fig, path)
