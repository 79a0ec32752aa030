"""Does a committee's deviation rise before an MD run collapses, and how early?

For a trajectory (its frames and their times), a committee and the run's collapse time: the deviation
along it, max_i σ_F,i per frame (``sake_md.committee``, eV/Å), and the lead time
t_collapse − t_cross, where t_cross is the first frame whose deviation passes a threshold. Times in ps.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


def committee_deviation_along(frames, potentials, batch_size: int = 32, device: str = "cpu", dtype=None) -> np.ndarray:
    """The committee's largest per-atom force deviation in every frame, eV/Å. Shape: (F,).
    ``frames``: ASE Atoms (any iterable), or a trajectory file (every frame is read); ``potentials``: checkpoint paths
    or ``SAKEPotential``s (at least two), or a ``CommitteeCalculator``."""
    from ..committee import CommitteeCalculator

    if isinstance(frames, (str, os.PathLike)):
        import ase.io

        frames = ase.io.read(frames, ":")
    calc = potentials if isinstance(potentials, CommitteeCalculator) else CommitteeCalculator(
        potentials, device=device, dtype=dtype)
    return np.array([o["forces_std_max"] for o in calc.predict(list(frames), batch_size)])


def first_crossing(times_ps, deviation, threshold: float, until_ps: float | None = None) -> float | None:
    """The time of the first frame (at or before ``until_ps``) whose deviation exceeds ``threshold``;
    None if there is none. Shapes: times_ps, deviation (F,)."""
    times_ps, deviation = np.asarray(times_ps, float), np.asarray(deviation, float)
    if times_ps.shape != deviation.shape:
        raise InputError(f"{len(times_ps)} frame times but {len(deviation)} deviations")
    crossed = deviation > threshold
    if until_ps is not None:
        crossed &= times_ps <= until_ps
    return float(times_ps[np.argmax(crossed)]) if crossed.any() else None


def warning_lead_time(times_ps, deviation, threshold: float, collapse_ps: float) -> float | None:
    """How long before the collapse (ps) the deviation first passed ``threshold``: collapse_ps − t_cross,
    0 when it crossed only at the collapse; None when it never crossed before (a missed warning)."""
    crossing = first_crossing(times_ps, deviation, threshold, until_ps=collapse_ps)
    return None if crossing is None else float(collapse_ps - crossing)


@dataclass
class EarlyWarning:
    """One collapsed run: its deviation along the trajectory and, per threshold (eV/Å), the lead time
    (ps; None = no warning before the collapse)."""

    collapse_ps: float
    times_ps: np.ndarray = field(repr=False)
    deviation: np.ndarray = field(repr=False)
    lead_ps: dict[float, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"collapse_ps": self.collapse_ps, "lead_ps": {str(k): v for k, v in self.lead_ps.items()},
                "times_ps": self.times_ps.tolist(), "deviation_eV_A": self.deviation.tolist()}


def early_warning(frames, potentials, collapse_ps: float, thresholds: Sequence[float], times_ps=None,
                  frame_interval_ps: float | None = None, **committee) -> EarlyWarning:
    """Deviation along a collapsed trajectory and the lead time for each threshold. Frame times come from ``times_ps``
    (F,) or, for frames written at a regular interval from t = 0, ``frame_interval_ps``. ``committee`` goes to
    ``committee_deviation_along`` (batch_size, device, dtype)."""
    deviation = committee_deviation_along(frames, potentials, **committee)
    if times_ps is None:
        if frame_interval_ps is None:
            raise InputError("give the frame times (times_ps) or the interval between frames (frame_interval_ps)")
        times_ps = np.arange(len(deviation)) * frame_interval_ps
    times_ps = np.asarray(times_ps, float)
    leads = {float(t): warning_lead_time(times_ps, deviation, t, collapse_ps) for t in thresholds}
    return EarlyWarning(float(collapse_ps), times_ps, deviation, leads)


def summarise_lead_times(leads: Sequence[float | None]) -> dict:
    """Over the collapsed runs of one variant: how many were warned, and the median and smallest lead (ps)."""
    warned = [x for x in leads if x is not None]
    return {"collapsed_runs": len(leads), "warned": len(warned),
            "median_lead_ps": float(np.median(warned)) if warned else None,
            "min_lead_ps": float(min(warned)) if warned else None}
