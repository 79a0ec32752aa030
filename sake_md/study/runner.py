"""Run study jobs side by side: each a subprocess with one torch thread, pinned to a core of its own.

Never more jobs than the cores this process may use (``os.sched_getaffinity``). A job's output goes to
``job.log`` in its run folder. On SIGTERM or Ctrl-C the jobs are terminated and the study stops; the
next invocation resumes them (at most one epoch or one MD segment lost per job).
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .definition import Run, Study

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def job_slots(jobs: int, cores=None) -> list[int]:
    """The cores to pin ``jobs`` jobs to, one each; fewer when fewer cores are available."""
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    return cores[:max(1, min(jobs, len(cores)))]


def job_command(study: Study, run: Run, device: str) -> list[str]:
    return [sys.executable, "-m", "sake_md.study.jobs", str(study.path), run.key, "--data-dir",
            str(study.data_dir), "--device", device]


def job_env() -> dict:
    """The environment of a job: one thread everywhere, and this copy of sake_md first on the path."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, **THREAD_ENV, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


@dataclass
class Job:
    run: Run
    core: int
    process: subprocess.Popen
    started: float
    log: object


class Terminated(Exception):
    """SIGTERM arrived; raised in the main loop so that the jobs are stopped before the study exits."""


def run_jobs(study: Study, runs: list[Run], jobs: int, device: str = "cpu", echo=print) -> dict[str, int]:
    """Run ``runs`` as subprocesses, ``jobs`` at a time. Returns each run's exit status by key."""
    slots = job_slots(jobs)
    if len(slots) < jobs:
        echo(f"{jobs} jobs asked for but only {len(slots)} core(s) available: running {len(slots)} at a time")
    free, queue, running, status = list(slots), list(runs), [], {}
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        while queue or running:
            while queue and free:
                running.append(_start(study, queue.pop(0), free.pop(0), device, echo))
            time.sleep(0.2)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                free.append(job.core)
                job.log.close()
                status[job.run.key] = code = job.process.returncode
                minutes = (time.perf_counter() - job.started) / 60
                outcome = "done" if code == 0 else f"FAILED (exit {code}; see {_log_path(study, job.run)})"
                echo(f"[{_clock()}] {outcome}: {job.run.key} after {minutes:.1f} min")
    except (KeyboardInterrupt, Terminated):
        _stop(running, echo)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return status


def _start(study: Study, run: Run, core: int, device: str, echo) -> Job:
    log_path = _log_path(study, run)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")
    log.write(f"\n=== {_clock()} start on core {core} ===\n")
    log.flush()
    process = subprocess.Popen(job_command(study, run, device), stdout=log, stderr=subprocess.STDOUT, env=job_env(),
                               preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    echo(f"[{_clock()}] start {run.key} (core {core})")
    return Job(run, core, process, time.perf_counter(), log)


def _stop(running: list[Job], echo) -> None:
    for job in running:
        job.process.terminate()
    for job in running:
        try:
            job.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
        job.log.close()
        echo(f"[{_clock()}] stopped {job.run.key}; it resumes on the next invocation")


def _raise_terminated(signum, frame):
    raise Terminated


def _log_path(study: Study, run: Run) -> Path:
    return study.run_dir(run) / "job.log"


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")
