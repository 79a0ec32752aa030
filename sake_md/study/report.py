"""The study's report, a pure function of its records directory: ``README.md`` (tables and computed
findings) and PNG plots (when matplotlib is installed).

Statistics (``sake_md.study.stats``, chosen for the design; docs/study.md says why): over seeds, mean ±
sample standard deviation (ddof 1) and the 95% t-interval of the mean; variants against the baseline by
per-seed paired differences (seed k shares its split with the baseline's seed k) with an exact sign-flip
test and Holm's adjustment over every test in the report, the primary metric (``[report] primary``) first;
stability by Kaplan–Meier survival (intact runs censored at the run length) and the restricted mean
survival time paired by seed and start frame; force error against stability within variants and across.
These replaced Welch's t-tests (uncorrected, MD trajectories taken as independent).
"""

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from .stats import (
    PairedEffect,
    PairedStability,
    holm,
    kaplan_meier,
    km_median,
    km_survival_at,
    min_sign_flip_p,
    paired_effect,
    paired_stability,
    within_correlation,
)

ERRORS = [("energy_rmse_meV", "energy RMSE (meV)"), ("energy_mae_meV", "energy MAE (meV)"),
          ("force_rmse_meV_A", "force RMSE (meV/Å)"), ("force_mae_meV_A", "force MAE (meV/Å)")]


@dataclass
class Records:
    """records/study.json (the definition, may be empty) and every train and MD record."""

    study: dict
    train: list[dict]
    md: list[dict]
    committee: list[dict] = field(default_factory=list)

    def committee_of(self, molecule: str, variant: str) -> dict | None:
        return next((r for r in self.committee if (r["molecule"], r["variant"]) == (molecule, variant)), None)

    def molecules(self) -> list[str]:
        return _ordered(self.study.get("molecules", {}), [r["run"]["molecule"] for r in self.train + self.md])

    def variants(self, molecule: str | None = None) -> list[str]:
        """The definition's order, then any variant found only in the records; only those with records."""
        found = [r["run"]["variant"] for r in self.train + self.md if molecule in (None, r["run"]["molecule"])]
        return _ordered(self.study.get("variants", []), found)

    def trained(self, molecule: str, variant: str) -> list[dict]:
        return sorted((r for r in self.train if (r["run"]["molecule"], r["run"]["variant"]) == (molecule, variant)),
                      key=lambda r: r["run"]["seed"])

    def simulated(self, molecule: str, variant: str) -> list[dict]:
        return sorted((r for r in self.md if (r["run"]["molecule"], r["run"]["variant"]) == (molecule, variant)),
                      key=lambda r: r["run"]["seed"])

    def main_horizon(self) -> str | None:
        """The MD length every model ran (the study's md.time_ps), as the records' key."""
        if "md" in self.study:
            return f"{float(self.study['md']['time_ps']):g}"
        keys = [min(r["horizons"], key=float) for r in self.md]
        return min(keys, key=float) if keys else None


def _ordered(known, found) -> list[str]:
    return [k for k in known if k in set(found)] + sorted(set(found) - set(known))


def load_records(records_dir) -> Records:
    records_dir = Path(records_dir)
    study_file = records_dir / "study.json"
    study = json.loads(study_file.read_text()) if study_file.exists() else {}
    train = [json.loads(p.read_text()) for p in sorted(records_dir.rglob("*.train.json"))]
    md = [json.loads(p.read_text()) for p in sorted(records_dir.rglob("*.md.json"))]
    committee = [json.loads(p.read_text()) for p in sorted(records_dir.rglob("committee.json"))]
    return Records(study, train, md, committee)


# ---- statistics ---------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """n values: mean, sample std (ddof 1) and the 95% t-interval of the mean (NaN where n < 2)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


def summarize(values) -> Summary:
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    if len(x) == 1:
        return Summary(1, float(x[0]), math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * std / math.sqrt(len(x))
    return Summary(len(x), float(x.mean()), std, float(x.mean()) - half, float(x.mean()) + half)


def fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_summary(s: Summary, digits: int = 2, interval: bool = True) -> str:
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{fmt(s.mean, digits)} (n = 1)"
    text = f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)}"
    return text + (f" [{fmt(s.lo, digits)}, {fmt(s.hi, digits)}]" if interval else "")


# ---- per cell -----------------------------------------------------------------------------------------------
def error_values(records: Records, molecule: str, variant: str, quantity: str) -> list[float]:
    return [r["test"][quantity]["value"] for r in records.trained(molecule, variant)]


def trajectories(records: Records, molecule: str, variant: str, horizon: str) -> list[dict]:
    """Every trajectory of every seed at ``horizon`` (ps, as the records' key)."""
    return [t for r in records.simulated(molecule, variant) if horizon in r["horizons"]
            for t in r["horizons"][horizon]["runs"]]


def model_stability(records: Records, molecule: str, variant: str, horizon: str) -> dict[int, float]:
    """Mean stability time of each trained model (seed -> ps)."""
    return {r["run"]["seed"]: float(np.mean([t["stability_ps"] for t in r["horizons"][horizon]["runs"]]))
            for r in records.simulated(molecule, variant) if horizon in r["horizons"]}


def bond_label(collapse: str | None) -> str | None:
    """'bond C1–H6 is 1.660 Å, ...' -> 'C1–H6'."""
    m = re.match(r"bond (\S+) is", collapse or "")
    return m.group(1) if m else collapse


# ---- tables -------------------------------------------------------------------------------------------------
def error_table(records: Records, molecule: str) -> list[str]:
    lines = ["| variant | seeds | " + " | ".join(label for _, label in ERRORS) + " |",
             "|---|---:|" + "---:|" * len(ERRORS)]
    for v in records.variants(molecule):
        cells = [fmt_summary(summarize(error_values(records, molecule, v, q))) for q, _ in ERRORS]
        lines.append(f"| `{v}` | {len(records.trained(molecule, v))} | " + " | ".join(cells) + " |")
    return lines


def stability_table(records: Records, molecule: str, horizon: str) -> list[str]:
    lines = ["| variant | models | stability time (ps) | collapsed | KM median (ps) | KM S(end), pooled [per model] "
             "| h(r) error | first broken bonds |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for v in records.variants(molecule):
        runs = trajectories(records, molecule, v, horizon)
        if not runs:
            continue
        models = sum(horizon in r["horizons"] for r in records.simulated(molecule, v))
        collapsed = [bond_label(t["collapse"]) for t in runs if t["collapse"] is not None]
        bonds = ", ".join(f"{b} ×{k}" for b, k in Counter(collapsed).most_common()) or "none"
        km = survival(records, molecule, v, horizon)
        median = "—" if km["median"] is None else f"{km['median']:.2f}"
        if km["median"] is None:  # fewer than half collapsed: the median lies beyond the run length
            median = f"> {float(horizon):g}"
        per_model = ", ".join(f"{x:.2f}" for x in km["per_model"])
        lines.append(f"| `{v}` | {models} | {fmt_summary(summarize([t['stability_ps'] for t in runs]), interval=False)}"
                     f" | {len(collapsed)} / {len(runs)} | {median} | {km['end']:.2f} [{per_model}] | "
                     f"{fmt_summary(summarize([t['hr_error'] for t in runs]), 3, interval=False)} | {bonds} |")
    return lines


def stability_arrays(records: Records, molecule: str, variant: str, horizon: str) -> dict[int, tuple]:
    """Per seed: (start frames (R,), stability times (R,) ps, collapsed (R,) bool), in start-frame order."""
    out = {}
    for r in records.simulated(molecule, variant):
        if horizon not in r["horizons"]:
            continue
        runs = sorted(r["horizons"][horizon]["runs"], key=lambda t: t["start_frame"])
        out[r["run"]["seed"]] = (np.array([t["start_frame"] for t in runs]),
                                 np.array([t["stability_ps"] for t in runs], dtype=float),
                                 np.array([t["collapse"] is not None for t in runs]))
    return out


def survival(records: Records, molecule: str, variant: str, horizon: str) -> dict:
    """Kaplan–Meier of one cell at ``horizon``: pooled over its models (median, S at the end) and S at the
    end per model (seed order). Intact runs are censored at their stability time (the run length)."""
    arrays = stability_arrays(records, molecule, variant, horizon)
    end = float(horizon)
    times = np.concatenate([a[1] for a in arrays.values()]) if arrays else np.zeros(0)
    events = np.concatenate([a[2] for a in arrays.values()]) if arrays else np.zeros(0, bool)
    t, s = kaplan_meier(times, events)
    per_model = [km_survival_at(*kaplan_meier(a[1], a[2]), end) for a in arrays.values()]
    return {"median": km_median(t, s), "end": km_survival_at(t, s, end), "per_model": per_model,
            "events": int(events.sum()), "censored": int((~events).sum())}


def cost_table(records: Records, molecule: str, horizon: str) -> list[str]:
    lines = ["| variant | parameters | E+F ms (B = 1; median over models) | training samples per CPU-s | epochs | "
             "training CPU-h per model | of which compiling the step (min; median) | "
             "MD steps/s (all runs together; median over models) | "
             f"MD CPU-h per model ({horizon} ps runs only) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    long = []
    for v in records.variants(molecule):
        trained, simulated = records.trained(molecule, v), records.simulated(molecule, v)
        params = sorted({r["parameters"] for r in trained})
        epochs = sorted({r["cost"]["epochs"] for r in trained})
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        median = lambda xs: float(np.median(xs)) if xs else math.nan  # noqa: E731
        # a model that also ran a longer horizon carries its cost in the same record: kept out of this column
        short = [r for r in simulated if set(r["horizons"]) == {horizon}]
        long += [(v, r) for r in simulated if set(r["horizons"]) - {horizon}]
        lines.append(
            f"| `{v}` | {', '.join(f'{p:,}' for p in params) or '—'} | "
            f"{fmt(ef_ms(trained), 1)} | "
            f"{fmt(mean([samples_per_cpu_s(r) for r in trained]), 1)} | {', '.join(map(str, epochs)) or '—'} | "
            f"{fmt(mean([training_cpu_h(r) for r in trained]), 2)} | "
            f"{fmt(median([compile_minutes(r) for r in trained]), 1)} | "
            f"{fmt(median([r['horizons'][horizon]['steps_per_s'] for r in simulated if horizon in r['horizons']]), 1)}"
            f" | {fmt(mean([r['cost']['cpu_s'] / 3600 for r in short]), 2)} |")
    if long:
        lines += ["", "MD CPU-h of the models that also ran longer (the whole run, its shorter result taken on the "
                  "way): " + "; ".join(f"`{v}` seed {r['run']['seed']} "
                                       f"({max(map(float, r['horizons'])):g} ps) {r['cost']['cpu_s'] / 3600:.2f}"
                                       for v, r in long) + "."]
    lines += budget_forms(records, molecule)
    together = sorted({(r["cost"].get("device", "cpu"), r["cost"].get("trained_together", 1))
                       for v in records.variants(molecule) for r in records.trained(molecule, v)})
    if together != [("cpu", 1)] and together:
        lines += ["", "Training: " + "; ".join(f"{n} run(s) per job on {d}" for d, n in together)
                  + ". A job's time is shared by its runs; on a GPU, CPU-h is the host process's time."]
    return lines


def budget_forms(records: Records, molecule: str) -> list[str]:
    """Where a time budget's models trained partly on the clock and partly for the epochs it bought (a
    study's ``budget_epochs``): which models took which, so that neither form passes for the other."""
    by_epochs = [(v, r["run"]["seed"], r["cost"]["epochs"]) for v in records.variants(molecule)
                 for r in records.trained(molecule, v) if r["config"].get("time_budget") is None]
    clock = sum(r["config"].get("time_budget") is not None for v in records.variants(molecule)
                for r in records.trained(molecule, v))
    if not (by_epochs and clock):
        return []
    return ["", f"Training length: {clock} model(s) on the clock (the time budget); {len(by_epochs)} for the epochs "
            "the budget bought on the reference machine: " + ", ".join(f"`{v}` seed {s} ({e})" for v, s, e in by_epochs)
            + ". Their CPU-h and samples per CPU-s are those of the machine they ran on."]


def ef_ms(trained: list[dict]) -> float:
    """E+F milliseconds of a cell: the median over its models of each model's median call, so that one
    model timed beside a busy neighbour (the other core's job, a test run) does not move the cell."""
    return float(np.median([r["ef_ms"]["median"] for r in trained])) if trained else math.nan


def samples_per_cpu_s(record: dict) -> float:
    """Training samples per CPU-second of the job (per model): unlike samples per wall-second, blind to a job
    being paused or waiting for a busy core. (samples/s × train_seconds = the samples seen.)"""
    c = record["cost"]
    if "train_seconds" not in c or not c.get("cpu_s"):
        return c["samples_per_s"]
    return c["samples_per_s"] * c["train_seconds"] / (training_cpu_h(record) * 3600)


def compile_minutes(record: dict) -> float:
    """Minutes of a model's training budget spent compiling the training step: its first epoch's time beyond the
    median epoch's. A time budget counts them (they are part of what the run cost; torch's cache can shorten them
    for later runs of a shape). Later slow epochs (a recompile after a resume, a busy core) are not separable
    from each other and are left out."""
    seconds = [row["seconds"] for row in record.get("validation_curve", []) if "seconds" in row]
    if len(seconds) < 3:
        return math.nan
    return max(seconds[0] - float(np.median(seconds)), 0.0) / 60


def training_cpu_h(record: dict) -> float:
    """CPU-hours of one model's training: a job that trained K runs together counts 1/K for each."""
    return record["cost"]["cpu_s"] / record["cost"].get("trained_together", 1) / 3600


def long_horizons(records: Records, molecule: str, main: str) -> list[str]:
    keys = {h for r in records.md if r["run"]["molecule"] == molecule for h in r["horizons"]}
    return sorted(keys - {main}, key=float)


# ---- findings -----------------------------------------------------------------------------------------------
DEFAULT_PRIMARY = "force_rmse_meV_A"
LABELS = {**dict(ERRORS), "stability": "stability time (ps; RMST, paired by seed and start frame)"}


@dataclass
class Comparison:
    """One variant against the baseline on one metric (an error quantity, or "stability") of one molecule:
    the paired effect over seeds, the baseline's mean, the start-frame pairs (stability) and Holm's p."""

    molecule: str
    variant: str
    metric: str
    effect: PairedEffect
    baseline_mean: float
    frames: PairedStability | None = None
    holm_p: float | None = None


def primary_metric(study: dict) -> tuple[str, bool]:
    """The primary metric's key and whether the study's definition states it (older ones did not)."""
    given = study.get("report", {}).get("primary")
    return (given or DEFAULT_PRIMARY), given is not None


def paired_errors(records: Records, molecule: str, variant: str, baseline: str, quantity: str):
    """(a, b), each (n,): ``quantity`` of the seeds that both cells trained, seed order."""
    a = {r["run"]["seed"]: r["test"][quantity]["value"] for r in records.trained(molecule, variant)}
    b = {r["run"]["seed"]: r["test"][quantity]["value"] for r in records.trained(molecule, baseline)}
    seeds = sorted(set(a) & set(b))
    return np.array([a[k] for k in seeds], dtype=float), np.array([b[k] for k in seeds], dtype=float)


def paired_times(records: Records, molecule: str, variant: str, baseline: str, horizon: str):
    """(a, b), each (S, R): stability times of the seeds both cells simulated from the same start frames."""
    a = stability_arrays(records, molecule, variant, horizon)
    b = stability_arrays(records, molecule, baseline, horizon)
    seeds = [k for k in sorted(set(a) & set(b)) if np.array_equal(a[k][0], b[k][0])]
    shape = (0, len(next(iter(a.values()))[1]) if a else 0)
    if not seeds:
        return np.zeros(shape), np.zeros(shape)
    return np.stack([a[k][1] for k in seeds]), np.stack([b[k][1] for k in seeds])


def comparisons(records: Records, molecule: str, horizon: str, baseline: str, primary: str) -> list[Comparison]:
    """Every variant against ``baseline``: the primary metric, then the other errors' RMSEs, then stability."""
    metrics = [primary] + [q for q in ("force_rmse_meV_A", "energy_rmse_meV") if q != primary]
    out = []
    for v in records.variants(molecule):
        if v == baseline or not records.trained(molecule, baseline):
            continue
        for q in metrics:
            a, b = paired_errors(records, molecule, v, baseline, q)
            out.append(Comparison(molecule, v, q, paired_effect(a, b), _mean(b)))
        a, b = paired_times(records, molecule, v, baseline, horizon)
        if a.size:
            frames = paired_stability(a, b)
            out.append(Comparison(molecule, v, "stability", frames.effect, float(b.mean()), frames))
    return out


def all_comparisons(records: Records, horizon: str, baseline: str, primary: str) -> list[Comparison]:
    """The comparisons of every molecule, with Holm's adjustment over all of them that have a test."""
    comps = [c for m in records.molecules() for c in comparisons(records, m, horizon, baseline, primary)]
    for c, p in zip(comps, holm([c.effect.p for c in comps]), strict=True):
        c.holm_p = p
    return comps


@dataclass
class PooledComparison:
    """One variant against the baseline on the primary metric, pooled over molecules: ``effect`` over the
    relative paired differences (fractions of the baseline's value), one per (molecule, seed)."""

    variant: str
    effect: PairedEffect
    molecules: list[str]
    metric: str = ""
    holm_p: float | None = None


def pooled_tests(records: Records, baseline: str, quantity: str) -> list[PooledComparison]:
    """Each variant against ``baseline`` on one test error over every required (not optional) molecule, one
    relative difference (a - b) / b per (molecule, seed) pair, so that molecules with different error scales
    weigh alike; the exact sign-flip test over all pairs (no adjustment here). Per molecule, S seeds cannot
    give p below 2^(1 - S) (0.0625 for 5), M molecules together can (2^(1 - MS))."""
    optional = {m for m, d in records.study.get("molecules", {}).items() if d.get("optional")}
    out = []
    for v in [v for v in records.variants() if v != baseline]:
        rel, used = [], []
        for m in [m for m in records.molecules() if m not in optional]:
            a, b = paired_errors(records, m, v, baseline, quantity)
            if len(a):
                rel += list((a - b) / b)
                used.append(m)
        if rel:
            out.append(PooledComparison(v, paired_effect(np.array(rel), np.zeros(len(rel))), used, quantity))
    return out


def _adjust(comps: list[PooledComparison]) -> list[PooledComparison]:
    """Holm's adjustment over ``comps`` as one family (their ``holm_p``, in place)."""
    for c, p in zip(comps, holm([c.effect.p for c in comps]), strict=True):
        c.holm_p = p
    return comps


def pooled_primary(records: Records, baseline: str, primary: str) -> list[PooledComparison]:
    """The primary test: ``pooled_tests`` on the primary metric, Holm's adjustment over the variants."""
    return _adjust(pooled_tests(records, baseline, primary))


def pooled_secondary(records: Records, baseline: str, primary: str) -> list[PooledComparison]:
    """The other test errors, pooled the same way, with Holm's adjustment over all of them together."""
    return _adjust([c for q, _ in ERRORS if q != primary for c in pooled_tests(records, baseline, q)])


def pooled_section(pooled: list[PooledComparison], baseline: str, primary: str, alpha: float) -> list[str]:
    """The primary test's table (nothing unless some variant has pairs in two molecules or more)."""
    if not any(len(c.molecules) > 1 for c in pooled):
        return []
    tests = sum(c.effect.p is not None for c in pooled)
    lines = [f"### Primary test: {LABELS[primary]}, pooled over molecules", "",
             f"Each variant against `{baseline}` over every required molecule: the relative paired difference "
             "per (molecule, seed), the mean with [its 95% t-interval], the exact two-sided sign-flip p over all "
             f"pairs and Holm's adjustment over these {tests} tests alone (α = {alpha}); the per-molecule "
             "tests below are secondary. Added to the report on 2026-12-06, after every run of the equal-epochs arm "
             "and seed 0 of the equal-cost arm (none of its other seeds): per molecule, even 5 seeds cannot reach "
             "p < 0.05.", "",
             f"| variant − `{baseline}` | pairs (molecules × seeds) | mean relative Δ [95% t-interval] | "
             "per pair | exact p (min) | Holm p |", "|---|---:|---|---|---|---|"]
    for c in pooled:
        e = c.effect
        pairs = ", ".join(f"{100 * d:+.1f}%" for d in e.diffs)
        if e.p is None:
            lines.append(f"| `{c.variant}` | {e.n} ({', '.join(c.molecules)}) | {100 * e.mean:+.1f}% | {pairs} | "
                         "one pair: no test | — |")
            continue
        verdict = f" **< {alpha:g}**" if c.holm_p < alpha else ""
        lines.append(f"| `{c.variant}` | {e.n} ({', '.join(c.molecules)}) | {100 * e.mean:+.1f}% "
                     f"[{100 * e.lo:+.1f}%, {100 * e.hi:+.1f}%] | {pairs} | {e.p:.3g} ({e.min_p:.3g}) | "
                     f"{c.holm_p:.3g}{verdict} |")
    return lines + [""]


def secondary_section(records: Records, baseline: str, primary: str) -> list[str]:
    """The other test errors pooled like the primary one (exploratory), and the tails of the force errors."""
    comps = pooled_secondary(records, baseline, primary)
    if not any(len(c.molecules) > 1 for c in comps):
        return []
    tests = sum(c.effect.p is not None for c in comps)
    lines = ["### Secondary tests: the other test errors, pooled the same way", "",
             f"Exploratory: the pooled test above on each other test error, with Holm's adjustment over these {tests} "
             "tests together; not chosen before the runs. Added to the report on 2026-12-07 (after every run of the "
             "equal-epochs arm and seeds 0–3 of the equal-cost arm), because the equal-cost interpretation cites "
             "them.", "",
             f"| variant − `{baseline}` | metric | pairs | mean relative Δ [95% t-interval] | below `{baseline}` | "
             "exact p (min) | Holm p |", "|---|---|---:|---|---:|---|---|"]
    for c in comps:
        e = c.effect
        below = f"{int((e.diffs < 0).sum())} of {e.n}"
        if e.p is None:
            lines.append(f"| `{c.variant}` | {LABELS[c.metric]} | {e.n} | {100 * e.mean:+.1f}% | {below} | one pair: "
                         "no test | — |")
            continue
        lines.append(f"| `{c.variant}` | {LABELS[c.metric]} | {e.n} | {100 * e.mean:+.1f}% "
                     f"[{100 * e.lo:+.1f}%, {100 * e.hi:+.1f}%] | {below} | {e.p:.3g} ({e.min_p:.3g}) | "
                     f"{c.holm_p:.3g} |")
    lines += ["", "Tails of the force errors, test force RMSE / MAE per model (the range over seeds; √(π/2) ≈ 1.25 "
              "for normally distributed errors, more where a few large errors dominate the RMSE):", ""]
    for m in records.molecules():
        cells = []
        for v in records.variants(m):
            ratios = [r["test"]["force_rmse_meV_A"]["value"] / r["test"]["force_mae_meV_A"]["value"]
                      for r in records.trained(m, v)]
            if ratios:
                span = f"{min(ratios):.2f}" if len(ratios) == 1 else f"{min(ratios):.2f}–{max(ratios):.2f}"
                cells.append(f"`{v}` {span}")
        lines.append(f"- {m}: " + ", ".join(cells))
    return lines + [""]


def comparison_table(comps: list[Comparison], baseline: str, alpha: float) -> list[str]:
    """One row per variant, one column per metric (the primary first): the paired difference and its tests."""
    metrics = list(dict.fromkeys(c.metric for c in comps))
    lines = [f"| variant − `{baseline}` | " + " | ".join(f"Δ {LABELS[m]}" + (" **(primary)**" if k == 0 else "")
                                                       for k, m in enumerate(metrics)) + " |",
             "|---|" + "---|" * len(metrics)]
    for v in dict.fromkeys(c.variant for c in comps):
        cells = {c.metric: _paired_cell(c, alpha) for c in comps if c.variant == v}
        lines.append(f"| `{v}` | " + " | ".join(cells.get(m, "—") for m in metrics) + " |")
    return lines


def _paired_cell(c: Comparison, alpha: float) -> str:
    e = c.effect
    if e.n == 0:
        return "—"
    rel = f" ({100 * e.mean / c.baseline_mean:+.1f}%)" if c.baseline_mean else ""
    seeds = ", ".join(f"{d:+.2f}" for d in e.diffs)
    if e.p is None:
        text = f"{e.mean:+.2f}{rel}; one model per variant: no test"
    else:
        verdict = f" **Holm p < {alpha:g}**" if c.holm_p is not None and c.holm_p < alpha else ""
        text = (f"{e.mean:+.2f}{rel} [{e.lo:+.2f}, {e.hi:+.2f}]; per seed {seeds}; exact p = {e.p:.3g} "
                f"(min {e.min_p:.3g}), Holm p = {c.holm_p:.3g}{verdict}")
    if c.frames is not None:
        f = c.frames
        text += f"; start frames longer/shorter/tied {f.wins}/{f.losses}/{f.ties}"
    return text


def long_run_pairs(records: Records, molecule: str, horizon: str, baseline: str) -> list[str]:
    """Start-frame pairs of the longer runs against the baseline (one model per cell: counts, no test)."""
    lines = []
    for v in records.variants(molecule):
        if v == baseline:
            continue
        a, b = paired_times(records, molecule, v, baseline, horizon)
        if a.size:
            f = paired_stability(a, b)
            lines.append(f"`{v}` − `{baseline}`: {f.effect.mean:+.2f} ps RMST over {a.shape[0]} model pair(s); "
                         f"start frames longer/shorter/tied {f.wins}/{f.losses}/{f.ties}")
    if not lines:
        return []
    return [f"- {horizon} ps (seeds with the longer run; too few models for a test across models): "
            + "; ".join(lines)]


def cell_means(records: Records, molecule: str, horizon: str) -> dict[str, dict]:
    """Per variant: mean test force RMSE, mean stability time, collapsed fraction, mean E+F ms."""
    out = {}
    for v in records.variants(molecule):
        runs = trajectories(records, molecule, v, horizon)
        trained = records.trained(molecule, v)
        out[v] = {"force_rmse": _mean(error_values(records, molecule, v, "force_rmse_meV_A")),
                  "stability": _mean([t["stability_ps"] for t in runs]),
                  "collapsed": (sum(t["collapse"] is not None for t in runs), len(runs)),
                  "ef_ms": ef_ms(trained),
                  "samples_per_s": _mean([samples_per_cpu_s(r) for r in trained])}
    return out


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def not_dominated(means: dict[str, dict]) -> list[str]:
    """Variants that no other variant beats in all of force RMSE (lower), stability (higher), E+F ms (lower)."""
    key = {v: (m["force_rmse"], -m["stability"], m["ef_ms"]) for v, m in means.items()
           if all(np.isfinite(x) for x in (m["force_rmse"], m["stability"], m["ef_ms"]))}

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [v for v in key if not any(dominates(key[w], key[v]) for w in key if w != v)]


def correlation_points(records: Records, molecule: str, horizon: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per trained and simulated model: test force RMSE (N,), mean stability time (N,) and its variant."""
    points = []
    for v in records.variants(molecule):
        stability = model_stability(records, molecule, v, horizon)
        for r in records.trained(molecule, v):
            if r["run"]["seed"] in stability:
                points.append((r["test"]["force_rmse_meV_A"]["value"], stability[r["run"]["seed"]], v))
    if not points:
        return np.zeros(0), np.zeros(0), []
    x, y, groups = zip(*points, strict=True)
    return np.array(x), np.array(y), list(groups)


def correlation(records: Records, molecule: str, horizon: str) -> str:
    """Test force RMSE against mean stability time, one point per model: across all models (between- and
    within-variant differences together), within variants (centred on each variant's mean), and per variant."""
    x, y, groups = correlation_points(records, molecule, horizon)
    if len(x) < 3:
        return f"force error vs stability: {len(x)} model(s) with both, too few for a correlation"
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return (f"force error vs stability: every one of the {len(x)} models has the same "
                f"{'stability time' if np.ptp(y) == 0 else 'force RMSE'} ({y[0] if np.ptp(y) == 0 else x[0]:g}): "
                "no correlation to compute")
    rho, p_rho = stats.spearmanr(x, y)
    r, p_r = stats.pearsonr(x, y)
    ceiling = int(np.sum(y == float(horizon))) if horizon else 0
    text = (f"force error vs stability ({len(x)} models, test force RMSE against mean stability time; "
            f"{ceiling} of {len(x)} at the ceiling, every run intact): across all models (between-variant "
            f"differences included) Spearman ρ = {rho:.2f} (p = {p_rho:.3g}), Pearson r = {r:.2f} (p = {p_r:.3g})")
    within = within_correlation(x, y, groups)
    if within is None and len(x) - len(set(groups)) - 1 < 1:
        text += "; within variants: too few models per variant for a within-variant correlation"
    elif within is None:
        text += "; within variants: no variation to correlate"
    else:
        text += (f"; within variants (each centred on its variant's mean, {within.groups} variants, df = "
                 f"{within.df}) r = {within.r:.2f} (p = {within.p:.3g})")
    per = []
    for v in dict.fromkeys(groups):
        inside = np.array(groups) == v
        if inside.sum() >= 3 and np.ptp(x[inside]) > 0 and np.ptp(y[inside]) > 0:
            per.append(f"`{v}` {stats.spearmanr(x[inside], y[inside])[0]:+.2f} (n = {int(inside.sum())})")
        elif inside.sum() >= 3:
            per.append(f"`{v}` — (n = {int(inside.sum())}, no variation)")
    if per:  # with 3 seeds ρ takes only the values ±1, ±0.5, 0: shown, not tested
        text += "; Spearman ρ per variant across its seeds (descriptive, no test): " + ", ".join(per)
    return text


def findings(records: Records, molecule: str, horizon: str, baseline: str, alpha: float,
             comps: list[Comparison] = (), primary: str = DEFAULT_PRIMARY) -> list[str]:
    means = cell_means(records, molecule, horizon)
    lines = []
    mine = [c for c in comps if c.molecule == molecule]
    first = [c for c in mine if c.metric == primary]
    if first:
        lines += [f"Primary metric, {LABELS[primary]}: " + "; ".join(
            f"`{c.variant}` {c.effect.mean:+.2f} against `{baseline}`"
            + (f" (Holm p = {c.holm_p:.3g})" if c.holm_p is not None else " (no test)") for c in first) + ".", ""]
    if mine:
        lines += comparison_table(mine, baseline, alpha) + [""]
    for h in long_horizons(records, molecule, horizon):
        lines += long_run_pairs(records, molecule, h, baseline)
    lines += [f"- {text}" for text in _extremes(means)]
    front = not_dominated(means)
    if front:
        lines.append("- not dominated in (force RMSE ↓, stability time ↑, E+F ms ↓): "
                     + ", ".join(f"`{v}`" for v in front))
    lines.append(f"- {correlation(records, molecule, horizon)}")
    return lines


def _extremes(means: dict[str, dict]) -> list[str]:
    facts = []
    for key, label, unit, best in (("force_rmse", "test force RMSE", "meV/Å", min),
                                   ("stability", "mean stability time", "ps", max),
                                   ("ef_ms", "E+F time", "ms", min),
                                   ("samples_per_s", "training throughput", "samples per CPU-s", max)):
        values = {v: m[key] for v, m in means.items() if np.isfinite(m[key])}
        if len(values) < 2:
            continue
        top = best(values, key=values.get)
        worst = (max if best is min else min)(values, key=values.get)
        if values[top] == values[worst]:
            facts.append(f"{label}: the same for every variant ({values[top]:.2f} {unit})")
            continue
        word = "lowest" if best is min else "highest"
        other = "highest" if best is min else "lowest"
        facts.append(f"{word} {label}: `{top}` ({values[top]:.2f} {unit}); {other}: `{worst}` "
                     f"({values[worst]:.2f} {unit})")
    return facts


# ---- the document -------------------------------------------------------------------------------------------
INTERPRETATION = "interpretation.md"


def record_counts(records: Records) -> str:
    """What an interpretation was written against, e.g. "24 training and 24 MD records"."""
    return f"{len(records.train)} training and {len(records.md)} MD records"


STATISTICS = "paired exact tests with Holm, pooled primary test, Kaplan–Meier"  # what an interpretation read


def interpretation_section(records: Records, text: str) -> list[str]:
    """The hand-written interpretation (``interpretation.md`` beside the report), flagged when the records
    have changed since it was written, or the report's statistics: its first line is ``<!-- written against:
    N training and M MD records; statistics: paired exact tests with Holm, pooled primary test, Kaplan–Meier -->``
    (no ``statistics:`` part: written against the older Welch's t-tests; another one: before the pooled test)."""
    first, _, body = text.partition("\n")
    lines = [f"## Interpretation (written by hand, `{INTERPRETATION}`)", ""]
    now = record_counts(records)
    if not (first.startswith("<!-- written against:") and first.endswith("-->")):
        body = text
        lines += [f"**It does not say which records it was written against; the tables above hold {now}.**", ""]
        return lines + [body.strip(), ""]
    against, _, statistics = first.removeprefix("<!-- written against:").removesuffix("-->").partition(";")
    if against.strip() != now:
        lines += [f"**Written against {against.strip()}; the records now hold {now}: check it against the tables "
                  "above.**", ""]
    given = statistics.strip().removeprefix("statistics:").strip()
    if given and given != STATISTICS:
        lines += [f"**Written against earlier statistics ({given}); the Findings above now also hold the primary "
                  "test pooled over molecules: check each claim against them.**", ""]
    elif not given:
        lines += ["**Written against the older statistics (Welch's t-tests over 3 seeds, uncorrected; stability "
                  "over trajectories taken as independent). The Findings above replace them with per-seed paired "
                  "differences, exact sign-flip tests and Holm's adjustment, Kaplan–Meier survival and the RMST "
                  "paired by seed and start frame, and within-variant correlations: check each claim against "
                  "them.**", ""]
    return lines + [body.strip(), ""]


def render(records: Records, plots: list[str] = (), interpretation: str | None = None) -> str:
    """README.md of the study: definition, tables per molecule, findings, the hand-written interpretation
    (if any), cost, what is missing, plots."""
    s = records.study
    main = records.main_horizon()
    baseline = s.get("report", {}).get("baseline", "sake")
    alpha = s.get("report", {}).get("alpha", 0.05)
    primary, stated = primary_metric(s)
    lines = [f"# {s.get('name', 'Study')}", "",
             f"Generated from the records in `records/` ({len(records.train)} training and {len(records.md)} MD "
             f"records) by `sake-md study {s.get('source', 'STUDY.toml')}{_arm_option(s)} --report-only`; every "
             "number here is recomputed from them: do not edit this file by hand.", ""]
    lines += _definition(s)
    lines += [f"Primary metric: {LABELS[primary]} on the test set"
              + (" (`[report] primary` of the study file)." if stated else
                 " (the report's default: this arm's recorded definition names none; it ran before the study file "
                 "stated one)."), "",
              "Statistics: mean ± sample std over seeds (ddof 1) and [the 95% t-interval of the mean]; stability "
              "times and h(r) errors: mean ± std over all trajectories of all seeds; KM: Kaplan–Meier survival "
              "of the time to collapse, intact runs censored at the run length (median: the time it drops to "
              "½; S(end): the fraction expected intact at the end, pooled and per model).", ""]
    for molecule in records.molecules():
        lines += [f"## {molecule}", "", "### Test errors", ""] + error_table(records, molecule) + [""]
        if main is not None:
            lines += [f"### MD stability, {main} ps", ""] + stability_table(records, molecule, main) + [""]
            for h in long_horizons(records, molecule, main):
                lines += [f"### MD stability, {h} ps", ""] + stability_table(records, molecule, h) + [""]
        lines += ["### Cost", ""] + cost_table(records, molecule, main or "") + [""]
        lines += learning_section(records, molecule)
        lines += committee_section(records, molecule)
    comps = all_comparisons(records, main or "", baseline, primary)
    tested = [c for c in comps if c.effect.p is not None]
    seeds = sorted({c.effect.n for c in tested})
    lines += ["## Findings", "", f"Computed from the records. Each variant against `{baseline}`: the mean of the "
              "per-seed paired differences (seed k of both trained on the same split; MD from the same start "
              "frames and momenta) with [its 95% t-interval], the differences per seed, the exact two-sided "
              "sign-flip permutation p over seeds (min: the smallest p it can give with that many seeds"
              + (f", {', '.join(f'{min_sign_flip_p(n):.3g} for {n}' for n in seeds)} seeds" if seeds else "")
              + f") and Holm's adjustment over all {len(tested)} per-molecule tests (α = {alpha}). Stability: "
              "the restricted mean survival time (mean stability time, runs censored at the run length) per "
              "model, paired by seed; start frames: trajectory pairs (same model seed, start frame and momenta) "
              "where the variant lasted longer/shorter/equally, conditional on the models. One model per "
              "variant: no test. These replace the earlier Welch's t-tests (uncorrected, trajectories taken as "
              "independent). " + ("The interpretation follows them." if interpretation else
                                  "Interpretation is left to the reader."), ""]
    lines += pooled_section(pooled_primary(records, baseline, primary), baseline, primary, alpha)
    lines += secondary_section(records, baseline, primary)
    for molecule in records.molecules():
        lines += [f"### {molecule}", ""] + findings(records, molecule, main or "", baseline, alpha, comps,
                                                     primary) + [""]
    if interpretation:
        lines += interpretation_section(records, interpretation)
    lines += _totals(records) + _missing(records)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _arm_option(s: dict) -> str:
    return f" --arm {s['arm']}" if s.get("arm_option") else ""


def learning_curve(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(training CPU minutes at the end of each epoch, validation force RMSE (meV/Å)), each (epochs,). The
    records time epochs by the wall clock; scaled by the job's CPU/wall ratio of training (one thread)."""
    rows = record["validation_curve"]
    wall = np.cumsum([row.get("seconds", 0.0) for row in rows])
    scale = training_cpu_h(record) * 3600 / wall[-1] if len(wall) and wall[-1] > 0 else 1.0
    return wall * scale / 60, np.array([row.get("val_force_rmse_meV_A", math.nan) for row in rows], dtype=float)


def learning_section(records: Records, molecule: str) -> list[str]:
    """Whether the models were still improving: validation force RMSE at ½, ¾ and all of each model's
    training CPU time (median over seeds), and its change over the last quarter."""
    rows = []
    for v in records.variants(molecule):
        points = []
        for r in records.trained(molecule, v):
            t, e = learning_curve(r)
            if len(t) and np.isfinite(e).any():
                at = [float(e[np.searchsorted(t, f * t[-1])]) for f in (0.5, 0.75)] + [float(e[-1])]
                points.append([*at, float(t[-1])])
        if points:
            half, three, end, minutes = np.median(points, axis=0)
            rows.append(f"| `{v}` | {len(points)} | {minutes:.1f} | {half:.2f} | {three:.2f} | {end:.2f} | "
                        f"{100 * (end - three) / three:+.1f}% |")
    if not rows:
        return []
    return ["### Learning (validation force RMSE against training CPU time)", "",
            "| variant | models | training CPU-min | at ½ | at ¾ | at the end | last quarter |",
            "|---|---:|---:|---:|---:|---:|---:|", *rows,
            "", "Medians over seeds, meV/Å, of the validation frames; a last quarter still falling means the "
            "ranking is of models not yet converged. Curves: learning.png.", ""]


def committee_section(records: Records, molecule: str) -> list[str]:
    """The committee early-warning table of one molecule (``committee_md``); nothing without records."""
    from .committee_md import summarize_cell

    cells = [(v, records.committee_of(molecule, v)) for v in records.variants(molecule)]
    cells = [(v, r) for v, r in cells if r is not None]
    if not cells:
        return []
    names = list(cells[0][1]["thresholds_eV_A"])
    lines = ["### Committee early warning", "",
             "The committee of each cell's seeds along every MD trajectory, over its whole length (the long runs "
             "too): max_i σ_F,i per frame, every 0.05 ps (the resolution of every time here). Thresholds: that "
             "committee's " + " and ".join(f"{n}" for n in names) + " on the test set. Warned: crossed before the "
             "collapse frame; lead: t_collapse − first crossing; false alarms: stable trajectories that crossed. "
             "Usual: the median over every frame before any collapse; before collapse: the median over collapsed "
             "trajectories of the frame 0.05 ps before the collapse.", "",
             "| variant | test p99 / max (eV/Å) | trajectories | collapsed | usual / before collapse (eV/Å) | "
             + " | ".join(f"warned ({n}) | median lead ({n}, ps) | false alarms ({n})" for n in names) + " |",
             "|---|---|---|---|---|" + "---|---|---|" * len(names)]
    for variant, record in cells:
        c = summarize_cell(record)
        t = record["test"]
        row = [f"`{variant}`", f"{t['p99_eV_A']:.3f} / {t['max_eV_A']:.3f}", str(c["trajectories"]),
               str(c["collapsed"]), f"{fmt(c['usual_eV_A'], 3)} / {fmt(c['frame_before_collapse_eV_A'], 3)}"]
        for n in names:
            b = c["by_threshold"][n]
            row += [f"{b['warned']}/{c['collapsed']}", fmt(b["median_lead_ps"]), f"{b['false_alarms']}/{c['stable']}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _definition(s: dict) -> list[str]:
    if not s:
        return []
    md = s["md"]
    molecules = ", ".join(f"{k} ({_length(m)}, seeds {m['seeds']}"
                          + (f"; {m['long_md_ps']:g} ps MD for seeds {m['long_md_seeds']}" if m["long_md_ps"] else "")
                          + (", optional" if m["optional"] else "") + ")" for k, m in s["molecules"].items())
    training = ", ".join(f"{k} = {v}" for k, v in s["training"].items()) or "the preset as it is"
    arm = f"Arm: {s['arm']}. " if s.get("arm") else ""
    return [f"{arm}Variants: {', '.join(f'`{v}`' for v in s['variants'])}. Molecules: {molecules}.",
            f"Data: `{s['data']['train']}` ({s['data']['n_valid']} frames held out for validation, split by the "
            f"seed) and `{s['data']['test']}` (test errors, MD start frames). Training: {training}.",
            f"MD: {md['preset']} protocol, {md['runs']} runs per model for {float(md['time_ps']):g} ps (start "
            f"frames and momenta drawn with seed {md['seed']}, the same for every model).", ""]


def _length(m: dict) -> str:
    if m.get("time_budget_s"):
        text = f"a training budget of {m['time_budget_s'] / 60:g} min per model"
        if m.get("budget_epochs"):
            text += (", or the epochs it bought on the reference machine for runs trained since they were "
                     "stated: " + ", ".join(f"`{v}` {e}" for v, e in m["budget_epochs"].items()))
        return text
    return f"epochs {m['epochs']}"


def _totals(records: Records) -> list[str]:
    train = sum(training_cpu_h(r) for r in records.train)
    md = sum(r["cost"]["cpu_s"] for r in records.md) / 3600
    costs = [r.get("cost", {}).get("cpu_s") for r in records.committee]
    if records.committee and all(c is not None for c in costs):
        committee, text = sum(costs) / 3600, f"committee analyses {sum(costs) / 3600:.2f} ({len(costs)} cells)"
    else:
        committee = 0.0
        text = "committee analyses not recorded" if records.committee else "no committee analyses"
    return ["## Cost of the study", "",
            f"{train + md + committee:.2f} CPU-hours recorded: training {train:.2f} ({len(records.train)} models), "
            f"MD {md:.2f} ({len(records.md)} models), {text}. CPU time is process time of one-thread jobs.", ""]


def _missing(records: Records) -> list[str]:
    """Stages of the definition without a record; optional molecules only once one of their runs exists."""
    s = records.study
    if not s:
        return []
    have = {(r["kind"], *r["run"].values()) for r in records.train + records.md}
    started = {r["run"]["molecule"] for r in records.train + records.md}
    missing = []
    for m, mol in s["molecules"].items():
        if mol["optional"] and m not in started:
            continue
        for k in mol["seeds"]:
            for v in s["variants"]:
                stages = [kind for kind in ("train", "md") if (kind, m, v, k) not in have]
                if stages:
                    missing.append(f"{m}/{v}/seed{k} ({', '.join(stages)})")
    if not missing:
        return []
    return ["## Not yet recorded", "", f"{len(missing)} run(s): " + ", ".join(missing) + ".", ""]
