"""One study job: train a run (or resume it), evaluate it, time it, then its MD stability, writing a record
after each stage. Run as a subprocess by the study's runner:

    python -m sake_md.study.jobs STUDY.toml MOLECULE/VARIANT/seedK [--data-dir DIR] [--device cpu] [--arm NAME]

Each stage is skipped when its record exists. Training resumes from the trainer's last.pt (at most one
epoch lost); MD resumes from its saved segment (at most one segment lost). CPU seconds are counted with
``time.process_time`` and saved in ``cost.json`` after every epoch and segment, so a killed job's work
that was kept is counted once it resumes.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__, distributed
from ..checkpoint import load_checkpoint, read_checkpoint
from ..devices import resolve_device, resolve_dtype
from ..errors import ConfigError, SakeMDError
from ..files import atomic_write
from ..md.rdf import h_of_r
from ..md.reference import read_reference
from ..md.replicas import SAKEForces
from ..md.segments import SegmentedStability, run_segmented, saved_step
from ..md.stability import PRESETS
from ..model import count_parameters
from ..train import TrainConfig, Trainer, read_config, train
from .definition import Run, Study, load_study

# settings that may differ between a killed run and its resumption: where files are, where and how it runs (the
# compiled step takes the eager step's steps, to rounding)
MAY_CHANGE = {"data", "out", "test", "device", "progress", "threads", "compile"}


def write_json(path, obj) -> Path:
    """Atomic: a temporary file renamed over the target."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1) + "\n"))


class CostLedger:
    """CPU and wall seconds of one stage, summed over every process that worked on it (``cost.json``)."""

    def __init__(self, path, stage: str):
        self.path, self.stage = Path(path), stage
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.base = dict(self.data.get(stage, {"cpu_s": 0.0, "wall_s": 0.0, "processes": 0}))
        self.base["processes"] += 1
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def save(self) -> dict:
        entry = {"cpu_s": round(self.base["cpu_s"] + time.process_time() - self.cpu0, 3),
                 "wall_s": round(self.base["wall_s"] + time.perf_counter() - self.wall0, 3),
                 "processes": self.base["processes"]}
        self.data[self.stage] = entry
        write_json(self.path, self.data)
        return entry


def run_job(study: Study, run: Run, device: str = "cpu", on_epoch_end=None, on_segment=None, md: bool = True) -> None:
    """Both stages of ``run`` (training alone without ``md``), each skipped when its record exists."""
    torch.set_num_threads(1)
    if not study.record_path(run, "train").exists():
        write_json(study.record_path(run, "train"), train_stage(study, run, device, on_epoch_end))
    if md and not study.record_path(run, "md").exists():
        write_json(study.record_path(run, "md"), md_stage(study, run, device, on_segment))


def run_stacked(study: Study, runs: list[Run], device: str = "cpu", md: bool = True, on_epoch_end=None) -> None:
    """Train the runs of ``runs`` that have no record yet together (``sake_md.stacked``), then finish each
    one as ``run_job`` does (energy shift, test errors, timing, record; MD unless ``md`` is False).

    Runs that cannot go together (started alone and now at different epochs) are trained one by one."""
    torch.set_num_threads(1)
    todo = [r for r in runs if not study.record_path(r, "train").exists()]
    if len(todo) > 1:
        epochs = {r: _epochs_done(study, r) for r in todo}
        if len(set(epochs.values())) == 1:
            stacked_training(study, todo, device, on_epoch_end)
    for run in runs:
        run_job(study, run, device, md=md)


def compile_stacked(study: Study, runs: list[Run], device: str = "cpu") -> float | None:
    """Compile the stacked training step of ``runs`` into torch's on-disk cache, writing nothing else, so
    that their training job later starts from the cache (``--precompile``). Returns the compile seconds."""
    from ..stacked import StackedTraining

    torch.set_num_threads(1)
    cfgs = [study.train_config(r, device) for r in runs]
    device = resolve_device(device)
    trainers = [Trainer(cfg, distributed.Context(), device) for cfg in cfgs]
    stack = StackedTraining(trainers)
    index, _ = stack.epoch_index(0)
    # the step's first call compiles it (no optimiser step takes its gradients)
    stack.train_step(stack.train_frames.take(index[0]), trainers[0].loss_settings())
    return stack.compile_seconds


def _epochs_done(study: Study, run: Run) -> int:
    last = study.run_dir(run) / "train" / "last.pt"
    return int(read_checkpoint(last)["extra"]["state"]["epoch"]) if last.exists() else 0


def stacked_training(study: Study, runs: list[Run], device: str = "cpu", on_epoch_end=None) -> None:
    """The training of ``runs`` (no records yet, all at one epoch) in one stacked process; each run's CPU
    and wall seconds are those of the whole process (they are shared)."""
    from ..stacked import train_stacked

    cfgs = [study.train_config(r, device) for r in runs]
    resume = (Path(cfgs[0].out) / "last.pt").exists()
    for run, cfg in zip(runs, cfgs, strict=True):
        out = Path(cfg.out)
        if resume:
            _check_unchanged(read_config(out).to_dict(), cfg.to_dict(), run, out)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    ledgers = {cfg.out: CostLedger(study.run_dir(r) / "cost.json", "train") for r, cfg in zip(runs, cfgs, strict=True)}

    def epoch_end(trainer, row):
        ledgers[trainer.cfg.out].save()
        if on_epoch_end is not None:
            on_epoch_end(trainer, row)

    train_stacked(cfgs, resume=resume, on_epoch_end=epoch_end, finalize=False)


# ---- training --------------------------------------------------------------------------------------------
def train_stage(study: Study, run: Run, device: str = "cpu", on_epoch_end=None) -> dict:
    cfg = study.train_config(run, device)
    out = Path(cfg.out)
    ledger = CostLedger(study.run_dir(run) / "cost.json", "train")
    resume = (out / "last.pt").exists()
    if resume:
        _check_unchanged(read_config(out).to_dict(), cfg.to_dict(), run, out)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")  # today's paths and device

    def epoch_end(trainer, row):
        ledger.save()
        if on_epoch_end is not None:
            on_epoch_end(trainer, row)

    best = train(cfg, resume=resume, on_epoch_end=epoch_end)
    data, last = read_checkpoint(best), read_checkpoint(out / "last.pt")
    potential = load_checkpoint(best)
    test_atoms = read_reference(cfg.test).atoms(0)
    timing = ef_timing(potential, test_atoms, study.report["ef_repeats"], resolve_device(device))
    cost, t = ledger.save(), last["training"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    root = study.root
    test = {k: v for k, v in data["metrics"]["test"].items() if k not in ("checkpoint", "data")}
    return {"kind": "train", "run": run.to_dict(), "sake_md_version": __version__, "finished": _now(),
            "config": portable(cfg.to_dict(), root), "parameters": count_parameters(potential),
            "cost": {**cost, "epochs": t["epochs"], "train_seconds": t["seconds"],
                     "samples_per_s": t["samples_per_s"], "device": t["device"], "threads": 1,
                     "trained_together": t.get("stacked", 1)},
            "validation_curve": rows,
            "best": {"epoch": data["training"]["best_epoch"], **data["metrics"]["validation"]},
            "test": {"data": os.path.relpath(cfg.test, root), **test},
            "ef_ms": timing, "checkpoint": os.path.relpath(best, study.out)}


def changed_settings(saved: dict, now: dict) -> dict:
    """{setting: (saved, now)} where a run's settings differ from the study's, but those that may change; a setting
    added to TrainConfig since the run was saved reads as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k: (saved.get(k, defaults.get(k)), v) for k, v in now.items()
            if k not in MAY_CHANGE and saved.get(k, defaults.get(k)) != v}


def _check_unchanged(saved: dict, now: dict, run: Run, out: Path) -> None:
    changed = changed_settings(saved, now)
    if changed:
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"{run.key} was started with other settings than the study now gives ({what}); "
                          f"delete {out} to train it again with the new ones")


def ef_timing(potential, atoms, repeats: int, device: torch.device) -> dict:
    """ms per energy+forces call on one molecule (B = 1), the median of ``repeats`` after 3 warm-up calls.

    CPU: process time of this (one-thread) process, robust to other load; CUDA: synchronised wall time.
    """
    model = SAKEForces.for_atoms(potential, [atoms], device)
    x = torch.tensor(atoms.positions[None], dtype=potential.dtype, device=device)
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    times = []
    for k in range(3 + repeats):
        t0 = clock()
        model(x)
        if cuda:
            torch.cuda.synchronize(device)
        if k >= 3:
            times.append(clock() - t0)
    return {"median": round(1e3 * statistics.median(times), 4), "min": round(1e3 * min(times), 4),
            "repeats": repeats, "batch": 1, "dtype": str(potential.dtype).removeprefix("torch."),
            "device": str(device), "clock": "wall (synchronised)" if cuda else "process CPU time, 1 thread"}


# ---- MD stability -----------------------------------------------------------------------------------------
def md_stage(study: Study, run: Run, device: str = "cpu", on_segment=None) -> dict:
    md = study.md
    ledger = CostLedger(study.run_dir(run) / "cost.json", "md")
    checkpoint = study.run_dir(run) / "train" / "best.pt"
    potential = load_checkpoint(checkpoint)
    if md["dtype"]:
        potential = potential.to(resolve_dtype(md["dtype"]))
    reference_file, start_file = study.data_file(run.molecule, "train"), study.data_file(run.molecule, "test")
    reference, start = read_reference(reference_file), read_reference(start_file)
    horizons = study.md_horizons(run)
    preset = PRESETS[md["preset"]]
    state_path = study.run_dir(run) / "md_state.pt"
    protocol = SegmentedStability(potential, reference, start, preset, md["runs"], md["seed"], resolve_device(device),
                                  run.key, compile=md["compile"],
                                  expected_calls=preset.steps(max(horizons)) - saved_step(state_path) + 1)

    def segment_end(r):
        ledger.save()
        if on_segment is not None:
            on_segment(r)

    results = run_segmented(protocol, horizons, md["segment_ps"], state_path, segment_end)
    protocol.save_frames(study.run_dir(run) / "md_frames.npz")  # for the committee analysis
    root = study.root
    return {"kind": "md", "run": run.to_dict(), "sake_md_version": __version__, "finished": _now(),
            "config": {"preset": md["preset"], "runs": md["runs"], "seed": md["seed"], "horizons_ps": horizons,
                       "segment_ps": md["segment_ps"], "dtype": str(potential.dtype).removeprefix("torch."),
                       "device": str(device), "reference": os.path.relpath(reference_file, root),
                       "start_frames_from": os.path.relpath(start_file, root),
                       "checkpoint": os.path.relpath(checkpoint, study.out)},
            "horizons": {f"{h:g}": _compact(r.to_dict()) for h, r in results.items()},
            "hr_reference": _rounded(h_of_r(reference.positions)), "cost": ledger.save()}


def _compact(result: dict) -> dict:
    """A stability result for the record: h(r) to 6 significant digits; the rest as it is."""
    return {**result, "hr": _rounded(result["hr"])}


def _rounded(values) -> list:
    return [float(f"{v:.6g}") if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def portable(cfg: dict, root: Path) -> dict:
    """File paths relative to the study root, so records read the same on every machine."""
    return {k: (os.path.relpath(v, root) if k in ("data", "out", "test") and v else v) for k, v in cfg.items()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_run(key: str) -> Run:
    try:
        molecule, variant, seed = key.split("/")
        return Run(molecule, variant, int(seed.removeprefix("seed")))
    except ValueError:
        raise ConfigError(f"a run is MOLECULE/VARIANT/seedK, got {key!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sake_md.study.jobs", description="Runs of a study.")
    ap.add_argument("study")
    ap.add_argument("runs", nargs="+", help="MOLECULE/VARIANT/seedK")
    ap.add_argument("--data-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arm", help="an [arms.NAME] of the study file")
    ap.add_argument("--stack", action="store_true", help="train the runs together (one model configuration)")
    ap.add_argument("--train-only", action="store_true", help="no MD stage")
    ap.add_argument("--compile-only", action="store_true", help="with --stack: only compile the step into the cache")
    args = ap.parse_args(argv)
    try:
        study, runs = load_study(args.study, args.data_dir, args.arm), [parse_run(r) for r in args.runs]
        if args.stack and args.compile_only:
            compile_stacked(study, runs, args.device)
        elif args.stack:
            run_stacked(study, runs, args.device, md=not args.train_only)
        else:
            for run in runs:
                run_job(study, run, args.device, md=not args.train_only)
    except SakeMDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
