"""Run study jobs side by side: each a subprocess with one torch thread, pinned to a core of its own.

Never more jobs than the cores this process may use (``os.sched_getaffinity``). A job's output goes to
``job.log`` in its run folder. On SIGTERM or Ctrl-C the jobs are terminated and the study stops; the
next invocation resumes them (at most one epoch or one MD segment lost per job). On SIGUSR1 the study
drains: the running jobs finish, no new one starts (before a machine is taken away, so that no
time-budgeted training is cut and its budget spent twice).
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .definition import Run, Study

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def job_slots(jobs: int, cores=None, spread: bool = False) -> list[tuple[int, ...]]:
    """The cores to pin ``jobs`` jobs to: one each (fewer jobs when fewer cores are available), or with
    ``spread`` (GPU jobs, whose CPU work is launching kernels and compiling them) all cores shared out."""
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    n = max(1, min(jobs, len(cores)))
    if not spread:
        return [(c,) for c in cores[:n]]
    return [tuple(int(c) for c in part) for part in np.array_split(cores, n)]


def job_command(study: Study, runs: list[Run], device: str, options=()) -> list[str]:
    arm = ("--arm", study.arm) if study.arm_option else ()
    return [sys.executable, "-m", "sake_md.study.jobs", str(study.path), *(r.key for r in runs), "--data-dir",
            str(study.data_dir), "--device", device, *arm, *options]


def job_env(cores: int = 1) -> dict:
    """The environment of a job: one thread everywhere (``cores`` compile workers), and this copy of
    sake_md first on the path."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, **THREAD_ENV, "TORCHINDUCTOR_COMPILE_THREADS": str(cores),
            "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


@dataclass
class Job:
    runs: list[Run]
    cores: tuple[int, ...]
    process: subprocess.Popen
    started: float
    log: object

    @property
    def label(self) -> str:
        return job_label(self.runs)


def job_label(runs: list[Run]) -> str:
    return runs[0].key if len(runs) == 1 else f"{len(runs)} runs together: {', '.join(r.key for r in runs)}"


class Terminated(Exception):
    """SIGTERM arrived; raised in the main loop so that the jobs are stopped before the study exits."""


def run_jobs(study: Study, units: list, jobs: int, device: str = "cpu", echo=print, options=(),
             on_done=None) -> dict[str, int]:
    """Run ``units`` (runs, or lists of runs trained together) as subprocesses, ``jobs`` at a time, with
    the job options ``options``; ``on_done(label, exit_status)`` after each job ends (e.g. to rewrite the
    report while the others run). Returns each unit's exit status by label."""
    units = [u if isinstance(u, list) else [u] for u in units]
    slots = job_slots(jobs, spread=device.startswith("cuda"))
    if len(slots) < jobs:
        echo(f"{jobs} jobs asked for but only {len(slots)} core(s) available: running {len(slots)} at a time")
    free, queue, running, status = list(slots), list(units), [], {}
    draining, told = [], False  # the handler only flags: printing inside a signal handler can re-enter a write

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: draining.append(signum))
    try:
        while (queue and not draining) or running:
            while queue and free and not draining:
                running.append(_start(study, queue.pop(0), free.pop(0), device, echo, options))
            time.sleep(0.2)
            if draining and not told:
                told = True
                echo(f"[{_clock()}] SIGUSR1: draining: {len(running)} running job(s) finish, {len(queue)} not started")
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                free.append(job.cores)
                job.log.close()
                status[job.label] = code = job.process.returncode
                minutes = (time.perf_counter() - job.started) / 60
                outcome = "done" if code == 0 else f"FAILED (exit {code}; see {_log_path(study, job.runs[0])})"
                echo(f"[{_clock()}] {outcome}: {job.label} after {minutes:.1f} min")
                if on_done is not None:
                    on_done(job.label, code)
    except (KeyboardInterrupt, Terminated):
        _stop(running, echo)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGUSR1, previous_usr1)
    if queue:
        echo(f"drained: {len(queue)} job(s) not started; run the same command again to run them")
    return status


def _start(study: Study, runs: list[Run], cores: tuple[int, ...], device: str, echo, options=()) -> Job:
    log_path = _log_path(study, runs[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")
    where = f"core {cores[0]}" if len(cores) == 1 else f"cores {cores[0]}-{cores[-1]}"
    log.write(f"\n=== {_clock()} start on {where} ===\n")
    log.flush()
    process = subprocess.Popen(job_command(study, runs, device, options), stdout=log, stderr=subprocess.STDOUT,
                               env=job_env(len(cores)), preexec_fn=lambda: os.sched_setaffinity(0, set(cores)))
    echo(f"[{_clock()}] start {job_label(runs)} ({where})")
    return Job(runs, cores, process, time.perf_counter(), log)


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
        echo(f"[{_clock()}] stopped {job.label}; it resumes on the next invocation")


def _raise_terminated(signum, frame):
    raise Terminated


def _log_path(study: Study, run: Run) -> Path:
    return study.run_dir(run) / "job.log"


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")
