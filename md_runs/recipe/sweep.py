"""The recipe levers of issue 9, each trained on the same CPU budget, side by side, one core per run.

    python md_runs/recipe/sweep.py --budget 8m --jobs 2 --out runs/sweep [--only NAME ...]

Every run is ``sake-md train --time-budget BUDGET --threads 1`` on rMD17 ``<molecule>_train_01`` (950 train /
50 validation frames), pinned to its own core, then ``sake-md eval`` of best.pt on ``test_01``. The table
``summary.json`` (and the printed one) holds the test errors, epochs and samples/s of each run. Runs
that are already done (test.json present) are skipped, so a killed sweep re-runs only what is missing.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OLD = {"recipe": "budget", "batch-size": 16, "lr": 1e-3, "loss": "mae", "energy-weight": 0.1}
# The new base: small batches, MSE on forces and per-atom energies, AMSGrad, EMA of the weights.
BASE = {"recipe": "budget", "batch-size": 4, "lr": 1e-3, "loss": "mse", "energy-per-atom": True,
        "energy-weight": 1.0, "amsgrad": True, "ema-decay": 0.99, "warmup-fraction": 0.05, "decay-end": 1.0}

RUNS = {  # name: (molecule, settings); each differs from OLD or BASE in one lever
    "old": ("ethanol", OLD),
    "old+ema": ("ethanol", {**OLD, "ema-decay": 0.99}),
    "old+mse": ("ethanol", {**OLD, "loss": "mse", "energy-per-atom": True, "energy-weight": 1.0}),
    "old+b4": ("ethanol", {**OLD, "batch-size": 4}),
    "base": ("ethanol", BASE),
    "base-ema": ("ethanol", {**BASE, "ema-decay": None}),
    "base-amsgrad": ("ethanol", {**BASE, "amsgrad": False}),
    "base+mae": ("ethanol", {**BASE, "loss": "mae"}),
    "base+huber": ("ethanol", {**BASE, "loss": "huber", "huber-delta": 0.2}),
    "base+lr3e-3": ("ethanol", {**BASE, "lr": 3e-3}),
    "base+lr5e-4": ("ethanol", {**BASE, "lr": 5e-4}),
    "base+ew10": ("ethanol", {**BASE, "energy-weight": 10.0}),
    "base+stage": ("ethanol", {**BASE, "stage-fraction": 0.2, "stage-energy-weight": 100.0}),
    "base+b8": ("ethanol", {**BASE, "batch-size": 8}),
    "base-malonaldehyde": ("malonaldehyde", BASE),
    "old-malonaldehyde": ("malonaldehyde", OLD),
}


def command(name: str, data_dir: Path, out: Path, budget: str, device: str) -> list[str]:
    molecule, settings = RUNS[name]
    cmd = [sys.executable, "-m", "sake_md.cli", "train", "--data", str(data_dir / f"rmd17_{molecule}_train_01.npz"),
           "--out", str(out / name), "--time-budget", budget, "--threads", "1", "--no-progress", "--device", device]
    for key, value in settings.items():
        if value is None:
            continue
        if value is True:
            cmd.append(f"--{key}")
        elif value is False:
            cmd.append(f"--no-{key}")
        else:
            cmd += [f"--{key}", str(value)]
    return cmd


def evaluate(name: str, data_dir: Path, out: Path) -> dict:
    molecule = RUNS[name][0]
    test = data_dir / f"rmd17_{molecule}_test_01.npz"
    result = subprocess.run([sys.executable, "-m", "sake_md.cli", "eval", str(out / name / "best.pt"), "--data",
                             str(test), "--json"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    (out / name / "test.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summarise(out: Path) -> list[dict]:
    rows = []
    for name in RUNS:
        run = out / name
        if not (run / "test.json").exists():
            continue
        report = json.loads((run / "test.json").read_text())
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        best = json.loads((run / "config.json").read_text())
        seconds = sum(r["seconds"] for r in log)
        frames = 950 * len(log)
        rows.append({"name": name, "molecule": RUNS[name][0], "epochs": len(log), "train_seconds": round(seconds, 1),
                     "samples_per_s": round(frames / max(seconds, 1e-9), 1), "batch_size": best["batch_size"],
                     **{k: round(report[k]["value"], 2) for k in ("force_mae_meV_A", "force_rmse_meV_A",
                                                                  "energy_mae_meV", "energy_rmse_meV")},
                     "best_val_force_mae_meV_A": round(min(r["val_force_mae_meV_A"] for r in log), 2)})
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/rmd17")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--budget", default="8m")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--first-core", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    names = [n for n in RUNS if args.only is None or n in args.only]
    todo = [n for n in names if not (args.out / n / "test.json").exists()]
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: dict[str, subprocess.Popen] = {}
    free = list(range(args.first_core, args.first_core + args.jobs))
    cores: dict[str, int] = {}
    while todo or running:
        while todo and free:
            name = todo.pop(0)
            core = free.pop(0)
            resume = (args.out / name / "last.pt").exists()
            cmd = command(name, args.data_dir, args.out, args.budget, args.device) + (["--resume"] if resume else [])
            log = open(args.out / f"{name}.log", "a")
            running[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             preexec_fn=lambda c=core: os.sched_setaffinity(0, {c}))
            cores[name] = core
            print(f"started {name} on core {core}", flush=True)
        time.sleep(2)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            free.append(cores[name])
            if proc.returncode == 0:
                try:
                    report = evaluate(name, args.data_dir, args.out)
                except subprocess.CalledProcessError as e:
                    print(f"{name}: evaluation failed: {e.stderr.strip()[-500:]}", flush=True)
                    continue
                print(f"{name}: test force MAE {report['force_mae_meV_A']['value']:.2f} meV/Å", flush=True)
            else:
                print(f"{name}: training failed (exit {proc.returncode}); see {args.out / name}.log", flush=True)
    for row in summarise(args.out):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
