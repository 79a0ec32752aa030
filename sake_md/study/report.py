"""The study's report, a pure function of its records directory: ``README.md`` (tables and computed
findings) and PNG plots (when matplotlib is installed).

Statistics: over seeds, mean ± sample standard deviation (ddof 1) and the 95% t-interval of the mean
(scipy.stats.t); stability over all trajectories of all seeds. "Beyond seed noise" means Welch's t-test
(unequal variances) gives p < alpha; p-values are not corrected for the number of comparisons.
"""

import json
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

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


def welch_p(a, b) -> float | None:
    """Two-sided p of Welch's t-test; None when either side has < 2 values or neither varies."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    with warnings.catch_warnings():  # a constant side (e.g. every run intact) is fine for Welch's test
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


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
    lines = ["| variant | models | stability time (ps) | collapsed | h(r) error | first broken bonds |",
             "|---|---:|---:|---:|---:|---|"]
    for v in records.variants(molecule):
        runs = trajectories(records, molecule, v, horizon)
        if not runs:
            continue
        models = sum(horizon in r["horizons"] for r in records.simulated(molecule, v))
        collapsed = [bond_label(t["collapse"]) for t in runs if t["collapse"] is not None]
        bonds = ", ".join(f"{b} ×{k}" for b, k in Counter(collapsed).most_common()) or "none"
        lines.append(f"| `{v}` | {models} | {fmt_summary(summarize([t['stability_ps'] for t in runs]), interval=False)}"
                     f" | {len(collapsed)} / {len(runs)} | "
                     f"{fmt_summary(summarize([t['hr_error'] for t in runs]), 3, interval=False)} | {bonds} |")
    return lines


def cost_table(records: Records, molecule: str, horizon: str) -> list[str]:
    lines = ["| variant | parameters | E+F ms (B = 1; median over models) | training samples per CPU-s | epochs | "
             "training CPU-h per model | MD steps/s (all runs together) | MD CPU-h per model |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in records.variants(molecule):
        trained, simulated = records.trained(molecule, v), records.simulated(molecule, v)
        params = sorted({r["parameters"] for r in trained})
        epochs = sorted({r["cost"]["epochs"] for r in trained})
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        lines.append(
            f"| `{v}` | {', '.join(f'{p:,}' for p in params) or '—'} | "
            f"{fmt(ef_ms(trained), 1)} | "
            f"{fmt(mean([samples_per_cpu_s(r) for r in trained]), 1)} | {', '.join(map(str, epochs)) or '—'} | "
            f"{fmt(mean([training_cpu_h(r) for r in trained]), 2)} | "
            f"{fmt(mean([r['horizons'][horizon]['steps_per_s'] for r in simulated if horizon in r['horizons']]), 1)}"
            f" | {fmt(mean([r['cost']['cpu_s'] / 3600 for r in simulated]), 2)} |")
    together = sorted({(r["cost"].get("device", "cpu"), r["cost"].get("trained_together", 1))
                       for v in records.variants(molecule) for r in records.trained(molecule, v)})
    if together != [("cpu", 1)] and together:
        lines += ["", "Training: " + "; ".join(f"{n} run(s) per job on {d}" for d, n in together)
                  + ". A job's time is shared by its runs; on a GPU, CPU-h is the host process's time."]
    return lines


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


def training_cpu_h(record: dict) -> float:
    """CPU-hours of one model's training: a job that trained K runs together counts 1/K for each."""
    return record["cost"]["cpu_s"] / record["cost"].get("trained_together", 1) / 3600


def long_horizons(records: Records, molecule: str, main: str) -> list[str]:
    keys = {h for r in records.md if r["run"]["molecule"] == molecule for h in r["horizons"]}
    return sorted(keys - {main}, key=float)


# ---- findings -----------------------------------------------------------------------------------------------
def comparison_table(records: Records, molecule: str, horizon: str, baseline: str, alpha: float) -> list[str]:
    """Each variant against the baseline: difference of means and Welch's p, marked beyond/within seed noise."""
    lines = [f"| variant − `{baseline}` | Δ force RMSE (meV/Å) | Δ energy RMSE (meV) | Δ stability time (ps) |",
             "|---|---|---|---|"]
    for v in records.variants(molecule):
        if v == baseline:
            continue
        cells = []
        for a, b in ((error_values(records, molecule, v, "force_rmse_meV_A"),
                      error_values(records, molecule, baseline, "force_rmse_meV_A")),
                     (error_values(records, molecule, v, "energy_rmse_meV"),
                      error_values(records, molecule, baseline, "energy_rmse_meV")),
                     ([t["stability_ps"] for t in trajectories(records, molecule, v, horizon)],
                      [t["stability_ps"] for t in trajectories(records, molecule, baseline, horizon)])):
            cells.append(_difference(a, b, alpha))
        lines.append(f"| `{v}` | " + " | ".join(cells) + " |")
    return lines


def _difference(a, b, alpha: float) -> str:
    if not a or not b:
        return "—"
    ma, mb = float(np.mean(a)), float(np.mean(b))
    rel = f" ({100 * (ma - mb) / mb:+.1f}%)" if mb else ""
    p = welch_p(a, b)
    if p is None:
        verdict = "p n/a"
    else:
        verdict = f"p = {p:.3g}, " + ("**beyond seed noise**" if p < alpha else "within seed noise")
    return f"{ma - mb:+.2f}{rel}; {verdict}"


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


def correlation(records: Records, molecule: str, horizon: str) -> str:
    """Test force RMSE against mean stability time, one point per trained and simulated model."""
    points = []
    for v in records.variants(molecule):
        stability = model_stability(records, molecule, v, horizon)
        for r in records.trained(molecule, v):
            if r["run"]["seed"] in stability:
                points.append((r["test"]["force_rmse_meV_A"]["value"], stability[r["run"]["seed"]]))
    if len(points) < 3:
        return f"force error vs stability: {len(points)} model(s) with both, too few for a correlation"
    x, y = np.array(points).T
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return (f"force error vs stability: every one of the {len(points)} models has the same "
                f"{'stability time' if np.ptp(y) == 0 else 'force RMSE'} ({y[0] if np.ptp(y) == 0 else x[0]:g}): "
                "no correlation to compute")
    rho, p_rho = stats.spearmanr(x, y)
    r, p_r = stats.pearsonr(x, y)
    return (f"force error vs stability ({len(points)} models, test force RMSE against mean stability time): "
            f"Spearman ρ = {rho:.2f} (p = {p_rho:.3g}), Pearson r = {r:.2f} (p = {p_r:.3g})")


def findings(records: Records, molecule: str, horizon: str, baseline: str, alpha: float) -> list[str]:
    means = cell_means(records, molecule, horizon)
    lines = []
    if baseline in means and len(means) > 1:
        lines += comparison_table(records, molecule, horizon, baseline, alpha) + [""]
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


def interpretation_section(records: Records, text: str) -> list[str]:
    """The hand-written interpretation (``interpretation.md`` beside the report), flagged when the records
    have changed since it was written: its first line is ``<!-- written against: N training and M MD
    records -->``."""
    first, _, body = text.partition("\n")
    lines = [f"## Interpretation (written by hand, `{INTERPRETATION}`)", ""]
    now = record_counts(records)
    if not (first.startswith("<!-- written against:") and first.endswith("-->")):
        body = text
        lines += [f"**It does not say which records it was written against; the tables above hold {now}.**", ""]
    elif (against := first.removeprefix("<!-- written against:").removesuffix("-->").strip()) != now:
        lines += [f"**Written against {against}; the records now hold {now}: check it against the tables "
                  "above.**", ""]
    return lines + [body.strip(), ""]


def render(records: Records, plots: list[str] = (), interpretation: str | None = None) -> str:
    """README.md of the study: definition, tables per molecule, findings, the hand-written interpretation
    (if any), cost, what is missing, plots."""
    s = records.study
    main = records.main_horizon()
    baseline = s.get("report", {}).get("baseline", "sake")
    alpha = s.get("report", {}).get("alpha", 0.05)
    lines = [f"# {s.get('name', 'Study')}", "",
             f"Generated from the records in `records/` ({len(records.train)} training and {len(records.md)} MD "
             f"records) by `sake-md study {s.get('source', 'STUDY.toml')} --report-only`; every number here is "
             "recomputed from them: do not edit this file by hand.", ""]
    lines += _definition(s)
    lines += ["Statistics: mean ± sample std over seeds (ddof 1) and [the 95% t-interval of the mean]; stability "
              "times and h(r) errors: mean ± std over all trajectories of all seeds.", ""]
    for molecule in records.molecules():
        lines += [f"## {molecule}", "", "### Test errors", ""] + error_table(records, molecule) + [""]
        if main is not None:
            lines += [f"### MD stability, {main} ps", ""] + stability_table(records, molecule, main) + [""]
            for h in long_horizons(records, molecule, main):
                lines += [f"### MD stability, {h} ps", ""] + stability_table(records, molecule, h) + [""]
        lines += ["### Cost", ""] + cost_table(records, molecule, main or "") + [""]
        lines += committee_section(records, molecule)
    lines += ["## Findings", "", f"Computed from the records (Welch's t-test against `{baseline}`, α = {alpha}, "
              "not corrected for multiple comparisons; errors: one value per seed; stability: one value per "
              "trajectory, taken as independent; p n/a: fewer than 2 values on a side, or no variation on "
              "either). " + ("The interpretation follows them." if interpretation else "Interpretation is left to "
                                                                           "the reader."), ""]
    for molecule in records.molecules():
        lines += [f"### {molecule}", ""] + findings(records, molecule, main or "", baseline, alpha) + [""]
    if interpretation:
        lines += interpretation_section(records, interpretation)
    lines += _totals(records) + _missing(records)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


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
    molecules = ", ".join(f"{k} (epochs {m['epochs']}, seeds {m['seeds']}"
                          + (f"; {m['long_md_ps']:g} ps MD for seeds {m['long_md_seeds']}" if m["long_md_ps"] else "")
                          + (", optional" if m["optional"] else "") + ")" for k, m in s["molecules"].items())
    training = ", ".join(f"{k} = {v}" for k, v in s["training"].items()) or "the preset as it is"
    return [f"Variants: {', '.join(f'`{v}`' for v in s['variants'])}. Molecules: {molecules}.",
            f"Data: `{s['data']['train']}` ({s['data']['n_valid']} frames held out for validation, split by the "
            f"seed) and `{s['data']['test']}` (test errors, MD start frames). Training: {training}.",
            f"MD: {md['preset']} protocol, {md['runs']} runs per model for {float(md['time_ps']):g} ps (start "
            f"frames and momenta drawn with seed {md['seed']}, the same for every model).", ""]


def _totals(records: Records) -> list[str]:
    train = sum(training_cpu_h(r) for r in records.train)
    md = sum(r["cost"]["cpu_s"] for r in records.md) / 3600
    return ["## Cost of the study", "",
            f"{train + md:.2f} CPU-hours recorded: training {train:.2f} ({len(records.train)} models), "
            f"MD {md:.2f} ({len(records.md)} models). CPU time is process time of one-thread jobs.", ""]


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
