"""SAKE as an i-PI client: path-integral (and any other) dynamics driven by a running i-PI server.

i-PI owns the dynamics (beads, thermostats, integrator) and asks its clients over a socket for energies
and forces of one bead at a time; this client answers with ``SAKECalculator`` through ASE's
``SocketClient``. The structure gives the species and the atom order, which must be those of i-PI's
input. UNIX sockets follow the convention of i-PI and ASE: the address ``NAME`` is the file
``/tmp/ipi_NAME``; an absolute path is used as it is (i-PI's ``sockets_prefix`` put it there).
Units: ASE's (eV, Å) on our side; the socket protocol carries atomic units and ASE converts.

``docs/ipi_malonaldehyde.xml`` is a documented input: 8-bead PIMD of malonaldehyde at 300 K.
"""

import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError

__all__ = ["run_ipi_client", "connect", "free_port"]

DEFAULT_PORT = 31415  # i-PI's and ASE's


def run_ipi_client(model=None, structure: str | None = None, unix: str | None = None, host: str = "localhost",
                   port: int = DEFAULT_PORT, dtype=None, device: str = "cpu", cutoff: float | None = None,
                   compile=False, wait_s: float = 60.0, log=None) -> int:
    """Answer i-PI's force requests until it sends EXIT (or closes the socket); returns how many were answered.

    ``model``: a checkpoint (default: as ``sake-md run``'s); ``structure``: a file ASE reads or an
    ``ase.build.molecule`` name, in i-PI's atom order; ``unix``: a socket name or absolute path, else inet
    ``host:port``; ``cutoff`` (Å): sparse mode, needed for periodic cells; ``wait_s``: how long to keep
    trying to connect while the server starts.
    """
    from ..calculator import SAKECalculator
    from ..shipped import potential_for
    from ..structures import load_structure

    atoms = load_structure(structure)
    atoms.calc = SAKECalculator(model or potential_for(atoms), device=device, dtype=dtype, cutoff=cutoff,
                                compile=compile)
    atoms.get_forces()  # refuses unknown elements before the server is kept waiting
    client = connect(unix, host, port, wait_s, log)
    answered = 0
    try:
        for _ in client.irun(atoms, use_stress=bool(atoms.pbc.all())):
            answered += 1
    finally:
        client.close()
    return answered


def connect(unix: str | None, host: str, port: int, wait_s: float, log=None):
    """ASE's ``SocketClient`` connected to the server, retrying every 0.2 s for ``wait_s`` seconds."""
    from ase.calculators.socketio import SocketClient

    deadline = time.monotonic() + wait_s
    where = f"UNIX socket {_unix_path(unix)}" if unix else f"{host}:{port}"
    while True:
        try:
            with _full_paths(unix):
                return SocketClient(host=host, port=port, unixsocket=unix, log=log)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if time.monotonic() > deadline:
                raise InputError(f"no i-PI server answered at {where} within {wait_s:g} s ({e}); start "
                                 "i-pi INPUT.xml first, with the same address") from e
            time.sleep(0.2)


def _unix_path(unix: str) -> str:
    return unix if Path(unix).is_absolute() else f"/tmp/ipi_{unix}"


@contextmanager
def _full_paths(unix: str | None):
    """ASE always prepends ``/tmp/ipi_`` to a UNIX socket's name; for an absolute path, connect to the path.

    ASE looks the prefix up in one module-level function at connect time, so it is swapped for the
    duration of the constructor only.
    """
    if not unix or not Path(unix).is_absolute():
        yield
        return
    from ase.calculators import socketio

    original = socketio.actualunixsocketname
    socketio.actualunixsocketname = lambda name: name
    try:
        yield
    finally:
        socketio.actualunixsocketname = original


def free_port() -> int:
    """An inet port nobody listens on now (for tests and examples)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
