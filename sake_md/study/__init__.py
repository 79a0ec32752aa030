"""A study: variants × molecules × seeds, each trained, evaluated and run through the MD stability protocol,
then compared in a report regenerated from the records alone. ``sake-md study STUDY.toml [--arm NAME]``.

* ``definition``: the TOML file -> runs, training configurations, MD settings
* ``jobs``: one run as a subprocess (train or resume, test errors, E+F timing, segmented MD), records
* ``runner``: N jobs side by side, one thread and one core each (GPU jobs: the cores shared out)
* ``committee_md``: each cell's seeds as a committee along every MD trajectory (lead times before collapses)
* ``stats``: the statistics fit for the design (paired exact tests, Holm, Kaplan–Meier, within-variant correlation)
* ``report``, ``plots``: records -> README.md tables, computed findings and PNGs (learning curves too)
* ``publish``: the median-validation seed of each cell -> potentials/<variant>_<molecule>.pt + model card
* ``sizing``: measured speed -> epochs and CPU-hours
"""

import json
import os
from pathlib import Path

from ..devices import resolve_device
from ..errors import ConfigError, DataError
from .definition import Run, Study, load_study
from .plots import write_plots
from .report import INTERPRETATION, load_records, render

__all__ = ["Run", "Study", "load_study", "run_study", "write_report"]


def run_study(study_file, variants=(), molecules=(), seeds=(), jobs: int = 2, device: str = "cpu", data_dir=None,
              report_only: bool = False, publish: bool = False, size: bool = False, dry_run: bool = False,
              stretch: bool = False, stack: bool = False, train_only: bool = False, precompile: bool = False,
              arm: str | None = None, echo=print) -> int:
    """Run what is missing of the selection, then regenerate the report. Returns the exit status: 0, 1 if a job
    failed, 130 or 143 when stopped by Ctrl-C or SIGTERM (the jobs are stopped too; the report is not written).

    ``stack``: the runs still to train go in groups that share a model configuration, molecule size and
    epochs, each group one job training its runs together (``sake_md.stacked``; what makes a GPU pay
    at batch 4). ``precompile`` (with ``stack``): first compile every group's step side by side into torch's
    cache, so that groups queued behind ``jobs`` start without compiling. ``train_only``: no MD stage.
    ``arm``: an ``[arms.NAME]`` of the study file (its own records folder and report)."""
    from .jobs import write_json  # not at import time: ``python -m sake_md.study.jobs`` runs that module

    study = load_study(study_file, data_dir, arm)
    status = 0
    if not report_only:
        runs = study.select(variants, molecules, seeds, stretch)
        if not runs:
            raise ConfigError("no runs match the selection (optional molecules need --molecule NAME or --stretch)")
        device = str(resolve_device(device))
        if size:
            return _size(study, runs, device, echo)
        stages = ("train",) if train_only else ("train", "md")
        todo = [r for r in runs if not all(study.record_path(r, s).exists() for s in stages)]
        _warn_stale(study, runs, device, echo)
        echo(f"{study.name}: {len(runs)} runs selected, {len(runs) - len(todo)} done, {len(todo)} to run "
             f"({sum(not study.record_path(r, 'train').exists() for r in todo)} to train); records in {study.records}")
        _check_data(study, todo)
        if dry_run:
            for r in todo:
                echo(f"  {r.key}")
            echo(training_hours(study, [r for r in todo if not study.record_path(r, "train").exists()]))
            return 0
        write_json(study.records / "study.json", study.to_dict())
        if todo:
            from .runner import Terminated, run_jobs

            options = ("--train-only",) if train_only else ()
            units = stacked_groups(study, todo) if stack else todo
            try:
                if stack and precompile:
                    groups = [u for u in units if len(u) > 1]
                    echo(f"compiling the training steps of {len(groups)} group(s) side by side")
                    run_jobs(study, groups, len(groups), device, echo, ("--stack", "--compile-only"))
                codes = run_jobs(study, units, jobs, device, echo, (*options, "--stack") if stack else options,
                                 on_done=lambda label, code: _report_so_far(study, echo))
            except (KeyboardInterrupt, Terminated) as e:
                echo("study stopped; run the same command again to resume")
                return 130 if isinstance(e, KeyboardInterrupt) else 143
            failed = [k for k, code in codes.items() if code != 0]
            if failed:
                echo(f"{len(failed)} run(s) failed: {', '.join(failed)}")
                status = 1
        if not train_only:
            from .committee_md import run_committees

            run_committees(study, sorted({r.molecule for r in runs}), sorted({r.variant for r in runs}), echo)
    elif not (study.records / "study.json").exists():
        write_json(study.records / "study.json", study.to_dict())
    for path in write_report(study.records, study.out):
        echo(f"wrote {path}")
    if publish:
        from .publish import publish as publish_cells

        source = os.path.relpath(study.path, study.root)
        for path in publish_cells(load_records(study.records), study.out, study.potentials, source, study.root):
            echo(f"published {path}")
    return status


def _report_so_far(study: Study, echo) -> None:
    """Rewrite the report from the records after each job, so that records and report agree whenever the
    study stops (a session's end, a drain); a report that fails here is said and retried at the end."""
    try:
        write_report(study.records, study.out)
    except Exception as e:  # noqa: BLE001 - the jobs matter more than an interim report
        echo(f"report not rewritten ({type(e).__name__}: {e}); it is written again when the study ends")


def training_hours(study: Study, runs: list[Run]) -> str:
    """What a dry run can say of the CPU-hours without measuring: the time budgets of the runs to train."""
    budgets = [study.molecules[r.molecule].time_budget_s for r in runs]
    known = sum(b for b in budgets if b is not None) / 3600
    unknown = sum(b is None for b in budgets)
    text = f"training: {known:.1f} CPU-hours for {len(runs) - unknown} run(s) with a time budget"
    if any(r.variant in study.molecules[r.molecule].budget_epochs for r in runs):
        text += " (as the epochs it bought on the reference machine: more hours on a slower one)"
    if unknown:
        text += f"; {unknown} run(s) with a number of epochs"
    return text + "; MD and epochs: measure with --size (CPU-hours of everything)"


def stacked_groups(study: Study, runs: list[Run]) -> list[list[Run]]:
    """``runs`` in groups that can train together: one variant, molecule size and number of epochs; runs
    that are trained already stay alone (their job only finishes them)."""
    from ..data import read_dataset

    sizes, groups, alone = {}, {}, []
    for run in runs:
        if study.record_path(run, "train").exists():
            alone.append([run])
            continue
        if run.molecule not in sizes:
            data = read_dataset(study.data_file(run.molecule, "train"))
            sizes[run.molecule] = tuple(sorted(set(data.n_atoms.tolist())))
        key = (run.variant, sizes[run.molecule], tuple(study.length(run).items()))
        groups.setdefault(key, []).append(run)
    return [*groups.values(), *alone]


def _check_data(study: Study, runs: list[Run]) -> None:
    for molecule in sorted({r.molecule for r in runs}):
        for which in ("train", "test"):
            path = study.data_file(molecule, which)
            if not path.exists():
                raise DataError(f"{path} not found: the study reads its data from {study.data_dir} "
                                "(set [paths] data_dir in the study file or pass --data-dir)")


def _warn_stale(study: Study, runs: list[Run], device: str, echo) -> None:
    """Records made with other settings than the study file now gives are kept, with a warning."""
    from ..objective import RECIPE_ALIASES
    from .jobs import changed_settings, portable

    for run in runs:
        path = study.record_path(run, "train")
        if not path.exists():
            continue
        recorded = json.loads(path.read_text())["config"]
        recorded["recipe"] = RECIPE_ALIASES.get(recorded.get("recipe"), recorded.get("recipe"))
        now = portable(study.train_config(run, device).to_dict(), study.root)
        changed = changed_settings(recorded, now)
        if study.same_budget(recorded, run):  # the clock's budget then, the epochs it bought now: one budget
            changed = {k: v for k, v in changed.items() if k not in ("epochs", "time_budget")}
        changed = sorted(changed)
        if changed:
            echo(f"warning: {run.key} was recorded with other {', '.join(changed)} than the study now gives; "
                 f"delete {path.parent}/seed{run.seed}.* and {study.run_dir(run)} to redo it")


def _size(study: Study, runs: list[Run], device: str, echo) -> int:
    from .sizing import measure, sizing_table

    _check_data(study, runs)
    cells = {(r.molecule, r.variant): r for r in runs}
    speeds = []
    for run in cells.values():
        echo(f"measuring {run.molecule} {run.variant} ...")
        speeds.append(measure(study, run, device))
    echo(sizing_table(study, speeds))
    return 0


def write_report(records_dir, out_dir=None) -> list[Path]:
    """README.md and the plots into ``out_dir`` (default: the folder above ``records_dir``)."""
    records = load_records(records_dir)
    out = Path(out_dir) if out_dir else Path(records_dir).parent
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(records, out)
    readme = out / "README.md"
    written = out / INTERPRETATION
    readme.write_text(render(records, [p.name for p in plots], written.read_text() if written.is_file() else None))
    return [readme, *plots]
