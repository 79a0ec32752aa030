"""Keep freed memory inside the process (glibc), so that large systems do not fault their buffers in again: raising
the mmap and trim thresholds and padding the heap makes the sparse model's time linear in N, for a higher peak resident
memory (why, and the measurements: docs/periodic.md, benchmarks/bench_periodic.py). Sparse-mode calculators and training
switch it on."""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
SETTINGS = ((M_MMAP_THRESHOLD, 2**31 - 1), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 1 << 30))
_active = False


def keep_freed_memory() -> bool:
    """Apply ``SETTINGS`` with glibc's ``mallopt`` once per process; False where that is unavailable."""
    global _active
    if _active or not sys.platform.startswith("linux"):
        return _active
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _active = all(mallopt(key, value) == 1 for key, value in SETTINGS)
    return _active
