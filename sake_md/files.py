"""The one atomic writer: a temporary file in the target's folder, renamed over the target, so a killed process
leaves the old file or the new one, never half of one (checkpoints, MD state, study records)."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` fills a temporary file, which then replaces ``path``; its permissions are an ordinary
    file's (as the umask says; ``mkstemp`` alone makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
