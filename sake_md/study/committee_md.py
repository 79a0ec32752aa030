"""Issue 12 in the study: can a committee warn before MD goes wrong?

For each cell (molecule, variant) whose seeds all have their MD done, the committee of its seeds' models
(``sake_md.committee``) is evaluated along every trajectory that the study's MD kept (``md_frames.npz``,
a frame every 0.05 ps): the largest per-atom force deviation max_i σ_F,i (eV/Å) per frame. The committee
includes the model that drove the trajectory, as a committee run during MD would.

Thresholds come from the same committee on the test set (in-distribution frames): its 99th percentile
and its maximum. For a collapsed trajectory the lead time is t_collapse − t_first crossing
(``sake_md.md.early_warning``; 0 = crossed only at the collapse frame, None = never before it); for a
stable one, a crossing is a false alarm. The record (``records/<molecule>/<variant>/committee.json``)
holds every deviation series, so the report recomputes everything from it.
"""

import time
from datetime import datetime, timezone

import numpy as np

from .. import __version__
from ..md.early_warning import committee_deviation_along, first_crossing, warning_lead_time
from .definition import Run, Study

THRESHOLDS = (("test p99", 99.0), ("test max", 100.0))


def cell_runs(study: Study, molecule: str, variant: str) -> list[Run]:
    return [Run(molecule, variant, s) for s in study.molecules[molecule].seeds]


def committee_ready(study: Study, molecule: str, variant: str) -> bool:
    """Every seed of the cell has its MD record and frames, and there are at least two seeds."""
    runs = cell_runs(study, molecule, variant)
    return len(runs) > 1 and all(study.record_path(r, "md").exists() and (study.run_dir(r) / "md_frames.npz").exists()
                                 for r in runs)


def committee_path(study: Study, molecule: str, variant: str):
    return study.records / molecule / variant / "committee.json"


def molecule_frames(numbers, positions) -> list:
    """ASE Atoms of one molecule at each of its positions. Shapes: numbers (N,), positions (F, N, 3)."""
    from ase import Atoms

    return [Atoms(numbers=numbers, positions=x) for x in np.asarray(positions, dtype=np.float64)]


def committee_stage(study: Study, molecule: str, variant: str, device: str = "cpu") -> dict:
    """The committee record of one cell (see the module's docstring)."""
    from ..committee import CommitteeCalculator
    from ..md.reference import read_reference
    from ..md.stability import PRESETS

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    dt_ps = PRESETS[study.md["preset"]].timestep_fs / 1000.0
    runs = cell_runs(study, molecule, variant)
    checkpoints = [study.run_dir(r) / "train" / "best.pt" for r in runs]
    calc = CommitteeCalculator([str(c) for c in checkpoints], device=device)
    test = read_reference(study.data_file(molecule, "test"))
    on_test = committee_deviation_along(molecule_frames(test.numbers, test.positions), calc, batch_size=64)
    thresholds = {name: float(np.percentile(on_test, q)) for name, q in THRESHOLDS}
    trajectories = []
    for run in runs:
        f = np.load(study.run_dir(run) / "md_frames.npz")
        for b, (start, step) in enumerate(zip(f["start_frames"], f["collapse_step"], strict=True)):
            collapse_ps = None if step < 0 else float(step) * dt_ps
            keep = f["time_ps"] <= collapse_ps + 1e-9 if collapse_ps is not None else np.ones(len(f["steps"]), bool)
            times = f["time_ps"][keep]
            dev = committee_deviation_along(molecule_frames(f["numbers"], f["positions"][keep, b]), calc,
                                            batch_size=64)
            entry = {"seed": run.seed, "replica": b, "start_frame": int(start), "collapse_ps": collapse_ps,
                     "until_ps": float(times[-1]), "max_deviation_eV_A": float(dev.max()),
                     "first_crossing_ps": {k: first_crossing(times, dev, t) for k, t in thresholds.items()},
                     "times_ps": [round(float(t), 4) for t in times],
                     "deviation_eV_A": [float(f"{d:.5g}") for d in dev]}
            if collapse_ps is not None:
                entry["lead_ps"] = {k: warning_lead_time(times, dev, t, collapse_ps) for k, t in thresholds.items()}
            trajectories.append(entry)
    return {"kind": "committee", "molecule": molecule, "variant": variant, "sake_md_version": __version__,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "members": [str(c.relative_to(study.out)) for c in checkpoints], "device": device,
            "test": {"frames": len(on_test), "median_eV_A": float(np.median(on_test)),
                     "p99_eV_A": thresholds["test p99"], "max_eV_A": thresholds["test max"]},
            "thresholds_eV_A": thresholds, "trajectories": trajectories,
            "cost": {"cpu_s": round(time.process_time() - start_cpu, 3),
                     "wall_s": round(time.perf_counter() - start_wall, 3)}}


def run_committees(study: Study, molecules, variants, echo=print, device: str = "cpu") -> list:
    """Write the committee record of every selected cell that is ready and has none yet."""
    from .jobs import write_json

    written = []
    for molecule in molecules:
        for variant in variants:
            path = committee_path(study, molecule, variant)
            if path.exists() or not committee_ready(study, molecule, variant):
                continue
            echo(f"committee of {molecule}/{variant} along its MD frames ...")
            written.append(write_json(path, committee_stage(study, molecule, variant, device)))
    return written


def summarize_cell(record: dict) -> dict:
    """Counts and lead times of one committee record, per threshold."""
    trajs = record["trajectories"]
    collapsed = [t for t in trajs if t["collapse_ps"] is not None]
    stable = [t for t in trajs if t["collapse_ps"] is None]
    # the usual level (every frame before any collapse) against the level one frame (0.05 ps) before each collapse
    before = [t["deviation_eV_A"][:-1] if t["collapse_ps"] is not None else t["deviation_eV_A"] for t in trajs]
    last = [t["deviation_eV_A"][-2] for t in collapsed if len(t["deviation_eV_A"]) > 1]
    out = {"trajectories": len(trajs), "collapsed": len(collapsed), "stable": len(stable), "by_threshold": {},
           "usual_eV_A": float(np.median(np.concatenate(before))) if before else None,
           "frame_before_collapse_eV_A": float(np.median(last)) if last else None}
    for name in record["thresholds_eV_A"]:
        leads = [t["lead_ps"][name] for t in collapsed]
        warned = [x for x in leads if x is not None and x > 0]
        out["by_threshold"][name] = {
            "warned": len(warned), "median_lead_ps": float(np.median(warned)) if warned else None,
            "false_alarms": sum(t["first_crossing_ps"][name] is not None for t in stable)}
    return out
