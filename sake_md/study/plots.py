"""The study's plots (PNG, matplotlib when installed), from the records alone: force RMSE per variant with
95% intervals, stability time per variant, h(r) of each variant over the reference, validation curves by epoch
and by training CPU time (learning.png: whether a ranking at this cost would hold at convergence)."""

from pathlib import Path

import numpy as np

from ..md.rdf import BINS
from ..plotting import pyplot, save
from .report import Records, error_values, learning_curve, summarize, trajectories


def write_plots(records: Records, out: Path) -> list[Path]:
    """The PNGs written into ``out``; none without matplotlib or records."""
    plt = pyplot()
    if plt is None:
        return []
    molecules = records.molecules()
    if not molecules:
        return []
    horizon = records.main_horizon()
    written = []
    for name, draw in (("force_rmse", _force_rmse), ("stability", _stability), ("hr", _hr),
                       ("validation", _validation), ("learning", _learning), ("committee", _committee)):
        fig, axes = plt.subplots(1, len(molecules), figsize=(4.5 * len(molecules), 3.6), squeeze=False)
        drawn = [draw(ax, records, m, horizon) for ax, m in zip(axes[0], molecules, strict=True)]
        if any(drawn):
            written.append(save(fig, out / f"{name}.png", dpi=110))
        else:
            plt.close(fig)
    return written


def _force_rmse(ax, records, molecule, horizon) -> bool:
    variants = [v for v in records.variants(molecule) if records.trained(molecule, v)]
    for i, v in enumerate(variants):
        values = error_values(records, molecule, v, "force_rmse_meV_A")
        s = summarize(values)
        if s.n > 1:
            ax.errorbar([i], [s.mean], yerr=[[s.mean - s.lo], [s.hi - s.mean]], fmt="o", capsize=5, color="C0")
        ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
    ax.set(title=f"{molecule}: test force RMSE", ylabel="meV/Å (mean, 95% t-interval, seeds)")
    return bool(variants)


def _stability(ax, records, molecule, horizon) -> bool:
    variants = [v for v in records.variants(molecule) if horizon and trajectories(records, molecule, v, horizon)]
    for i, v in enumerate(variants):
        times = [t["stability_ps"] for t in trajectories(records, molecule, v, horizon)]
        ax.bar([i], [np.mean(times)], yerr=[np.std(times, ddof=1) if len(times) > 1 else 0], capsize=4,
               color="C1", alpha=0.6)
        ax.scatter(i + np.linspace(-0.2, 0.2, len(times)), times, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
    ax.set(title=f"{molecule}: stability over {horizon} ps", ylabel="stability time (ps)")
    if horizon:
        ax.set_ylim(0, float(horizon) * 1.05)
    return bool(variants)


def _hr(ax, records, molecule, horizon) -> bool:
    centres = 0.5 * (BINS[1:] + BINS[:-1])
    drawn = False
    for k, v in enumerate(records.variants(molecule)):
        curves = [np.array(r["horizons"][horizon]["hr"], dtype=float) for r in records.simulated(molecule, v)
                  if horizon in r["horizons"]]
        if not curves:
            continue
        if not drawn:
            ref = records.simulated(molecule, v)[0]["hr_reference"]
            ax.plot(centres, np.array(ref, dtype=float), "k", lw=2, label="reference (DFT)")
            drawn = True
        ax.plot(centres, np.nanmean(curves, axis=0), lw=1, color=f"C{k}", label=v)
    if drawn:
        ax.set(title=f"{molecule}: h(r), intact frames", xlabel="r (Å)", ylabel="h(r) (1/Å)", xlim=(0, 6))
        ax.legend(fontsize=7)
    return drawn


def _validation(ax, records, molecule, horizon) -> bool:
    drawn = False
    for k, v in enumerate(records.variants(molecule)):
        for j, r in enumerate(records.trained(molecule, v)):
            curve = r["validation_curve"]
            ax.plot([row["epoch"] for row in curve], [row["val_force_mae_meV_A"] for row in curve], color=f"C{k}",
                    lw=1, label=v if j == 0 else None)
            drawn = True
    if drawn:
        ax.set(title=f"{molecule}: validation", xlabel="epoch", ylabel="force MAE (meV/Å)", yscale="log")
        ax.legend(fontsize=7)
    return drawn


def _learning(ax, records, molecule, horizon) -> bool:
    drawn = False
    for k, v in enumerate(records.variants(molecule)):
        for j, r in enumerate(records.trained(molecule, v)):
            minutes, error = learning_curve(r)
            if len(minutes) and np.isfinite(error).any():
                ax.plot(minutes, error, color=f"C{k}", lw=1, label=v if j == 0 else None)
                drawn = True
    if drawn:
        ax.set(title=f"{molecule}: learning", xlabel="training CPU minutes", ylabel="validation force RMSE (meV/Å)",
               yscale="log")
        ax.legend(fontsize=7)
    return drawn


def _committee(ax, records, molecule, horizon) -> bool:
    """Committee deviation before each collapse (time relative to it), and the test-set maximum per variant."""
    drawn = False
    for i, v in enumerate(records.variants(molecule)):
        record = records.committee_of(molecule, v)
        if record is None:
            continue
        color = f"C{i}"
        ax.axhline(record["test"]["max_eV_A"], color=color, ls=":", lw=1)
        label = v
        for t in record["trajectories"]:
            if t["collapse_ps"] is None:
                continue
            ax.plot(np.asarray(t["times_ps"]) - t["collapse_ps"], t["deviation_eV_A"], color=color, lw=0.8,
                    alpha=0.7, label=label)
            label, drawn = None, True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlim(-2.0, 0.05)  # the last 2 ps: where a warning would have to come from
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no committee with a collapse yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"{molecule}: committee before collapses", xlabel="t − t_collapse (ps)",
           ylabel="max_i σ_F,i (eV/Å); dotted: test max")
    return drawn
