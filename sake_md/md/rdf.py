"""h(r): the distribution of all interatomic distances (docs/stability.md, after Fu et al. 2023)."""

import numpy as np

BINS = np.linspace(0.0, 10.0, 501)  # 500 bins on (0, 10] Å


def distance_counts(positions: np.ndarray, bins: np.ndarray = BINS) -> np.ndarray:
    """Histogram counts of the distances of all pairs i < j over all frames. Shape: (F, N, 3) -> (len(bins)-1,)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, *np.shape(positions)[-2:])
    i, j = np.triu_indices(positions.shape[1], 1)
    d = np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)
    return np.histogram(d[np.isfinite(d)], bins)[0].astype(np.float64)


def density(counts: np.ndarray, bins: np.ndarray = BINS) -> np.ndarray:
    """Normalise counts so that h integrates to one over the bins (``np.histogram(density=True)``)."""
    total = counts.sum()
    return counts / (total * np.diff(bins)) if total > 0 else np.full_like(counts, np.nan)


def h_of_r(positions: np.ndarray, bins: np.ndarray = BINS) -> np.ndarray:
    """Density-normalised h(r) of frames (F, N, 3). Shape: (len(bins)-1,), in 1/Å."""
    return density(distance_counts(positions, bins), bins)


def hr_error(h_model: np.ndarray, h_reference: np.ndarray) -> float:
    """mean |h_model − h_reference| × 10, the error of the protocol."""
    return float(np.mean(np.abs(h_model - h_reference)) * 10.0)
