"""Publish each cell's median-validation model: ``potentials/<variant>_<molecule>.pt`` with a model card.

The median seed is chosen on the best validation force MAE (test data plays no part in the choice);
with an even number of seeds, the lower of the two middle ones.
"""

import os
import shutil
from pathlib import Path

from ..calculator import SAKECalculator
from ..errors import SakeMDError
from .report import ERRORS, Records, bond_label, fmt_summary, summarize


def median_seed(trained: list[dict]) -> dict:
    ranked = sorted(trained, key=lambda r: (r["best"]["force_mae_meV_A"], r["run"]["seed"]))
    return ranked[(len(ranked) - 1) // 2]


def publish(records: Records, out: Path, potentials: Path, study_file: str = "STUDY.toml",
            root: Path | None = None) -> list[Path]:
    """Copy the median seed's best.pt of every (molecule, variant) with training records, plus a card.

    ``out`` is the study folder that the records' checkpoint paths are relative to; the cards give the
    checkpoints' paths relative to ``root`` (the repository). Each copy is loaded with ``SAKECalculator``
    before the card is written; a file of the same name that no study published is never overwritten.
    """
    written = []
    potentials.mkdir(parents=True, exist_ok=True)
    for molecule in records.molecules():
        for variant in records.variants(molecule):
            trained = records.trained(molecule, variant)
            if not trained:
                continue
            chosen = median_seed(trained)
            source = out / chosen["checkpoint"]
            if not source.exists():
                raise SakeMDError(f"cannot publish {variant} on {molecule}: {source} is gone (the records stay, "
                                  "the run folders do not travel with the repository); re-run that seed")
            target = potentials / f"{variant}_{molecule}.pt"
            _refuse_foreign(target)
            shutil.copyfile(source, target)
            SAKECalculator(str(target))  # loads, or raises with the reason
            md = next((r for r in records.simulated(molecule, variant)
                       if r["run"]["seed"] == chosen["run"]["seed"]), None)
            card = target.with_suffix(".md")
            where = os.path.relpath(target, root) if root else str(target)
            card.write_text(model_card(chosen, trained, md, where, study_file))
            written += [target, card]
    return written


CARD_MARK = "One model of the ablation study"


def _refuse_foreign(target: Path) -> None:
    """Overwrite only what a study published: a hand-made potential of the same name is never replaced."""
    if not target.exists():
        return
    card = target.with_suffix(".md")
    if not (card.is_file() and CARD_MARK in card.read_text()):
        raise SakeMDError(f"will not publish over {target}: it was not published by a study (its card "
                          f"{card.name} says otherwise or is missing); set [paths] potentials to another folder")


def model_card(chosen: dict, trained: list[dict], md: dict | None, where: str, study_file: str) -> str:
    """The card of the checkpoint at ``where`` (the path users load it from)."""
    run, cfg, cost = chosen["run"], chosen["config"], chosen["cost"]
    seeds = ", ".join(f"seed {r['run']['seed']}: {r['best']['force_mae_meV_A']:.2f}" for r in trained)
    lines = [f"# `{Path(where).name}`: `{run['variant']}` on rMD17 {run['molecule']}", "",
             f"{CARD_MARK} ({study_file}): variant `{run['variant']}`, seed {run['seed']}, the "
             f"median of {len(trained)} seed(s) by best validation force MAE (meV/Å: {seeds}). Units eV, Å, "
             f"eV/Å; load with `SAKECalculator(\"{where}\")`.", "",
             "## Test errors", "", f"`{Path(chosen['test']['data']).name}`, {chosen['test']['frames']} frames; "
             "bootstrap 95% intervals over frames.", "", "| quantity | value | 95% interval |", "|---|---:|---|"]
    for key, label in ERRORS:
        s = chosen["test"][key]
        lines.append(f"| {label} | {s['value']:.2f} | [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] |")
    lines += ["", f"Validation ({cfg['n_valid']} held-out frames of `{Path(cfg['data']).name}`, split by the seed), "
              f"best epoch "
              f"{chosen['best']['epoch']}: force MAE {chosen['best']['force_mae_meV_A']:.2f} meV/Å, energy MAE "
              f"{chosen['best']['energy_mae_meV']:.2f} meV.", ""]
    if md is not None:
        lines += ["## MD stability", ""]
        for horizon, result in md["horizons"].items():
            runs = result["runs"]
            broken = [bond_label(t["collapse"]) for t in runs if t["collapse"]]
            stability = fmt_summary(summarize([t["stability_ps"] for t in runs]), interval=False)  # as the report
            lines.append(f"- {md['config']['preset']}, {horizon} ps, {len(runs)} runs: stability "
                         f"{stability} ps (mean ± sample std over the runs), "
                         f"{len(broken)} collapsed{' (' + ', '.join(broken) + ')' if broken else ''}, h(r) error "
                         f"{result['hr_error']:.3f}, {result['steps_per_s']:.1f} steps/s ({md['config']['device']}).")
        lines.append("")
    settings = ", ".join(f"{k} {cfg[k]}" for k in ("recipe", "epochs", "time_budget", "batch_size", "lr",
                                                   "energy_weight", "warmup_fraction", "decay_end", "dtype")
                         if cfg.get(k) is not None)  # epochs or a time budget (the equal-cost arm), not both
    model = ", ".join(f"{k} {v}" for k, v in cfg["model"].items() if k != "options" or v)
    lines += ["## Training", "", f"Model: {model}. Recipe: {settings}.",
              f"Cost: {cost['cpu_s'] / 3600:.2f} CPU-hours for {cost['epochs']} epochs, {cost['samples_per_s']:.1f} "
              f"training samples/s, one thread, {cost['device']}; E+F {chosen['ef_ms']['median']:.1f} ms per call "
              "(one molecule).", "",
              "## Reproduce", "", "```bash",
              f"sake-md study {study_file} --variant {run['variant']} --molecule {run['molecule']} "
              f"--seed {run['seed']}", "```", ""]
    return "\n".join(lines)
