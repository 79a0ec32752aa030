"""sake-md as an i-PI client (sake_md.engines.ipi): a short 8-bead PIMD run of docs/ipi_malonaldehyde.xml over a
UNIX socket, with a tiny random model; i-PI's potential equals SAKECalculator's on the beads it reports."""

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import ase.io
import numpy as np
import pytest

from sake_md import SAKECalculator
from sake_md.checkpoint import save_checkpoint
from sake_md.engines.ipi import run_ipi_client
from sake_md.errors import InputError

from .test_model import perturbed_potential

pytest.importorskip("ipi")
DOCS = Path(__file__).resolve().parents[1] / "docs"
STEPS, BEADS = 3, 8


def short_input(tmp_path: Path, socket: str) -> Path:
    """The documented input with STEPS steps, every step written, and the socket at ``socket``."""
    text = (DOCS / "ipi_malonaldehyde.xml").read_text()
    text = text.replace("<total_steps>20000</total_steps>", f"<total_steps>{STEPS}</total_steps>")
    text = text.replace('stride="10"', 'stride="1"').replace('stride="20"', 'stride="1"')
    text = text.replace("<address>sake_malonaldehyde</address>", f"<address>{socket}</address>")
    text = text.replace('<simulation verbosity="low">', f'<simulation verbosity="low" sockets_prefix="{tmp_path}/">')
    shutil.copy(DOCS / "malonaldehyde.xyz", tmp_path)
    path = tmp_path / "input.xml"
    path.write_text(text)
    return path


def test_pimd_of_malonaldehyde_over_a_unix_socket(tmp_path):
    model = save_checkpoint(tmp_path / "tiny.pt", perturbed_potential("sake", hidden=8, layers=2))
    name = f"sake-{uuid.uuid4().hex[:8]}"
    ipi = shutil.which("i-pi", path=str(Path(sys.executable).parent))
    assert ipi, "ipi is installed but its i-pi script was not found beside this Python"
    server = subprocess.Popen([sys.executable, ipi, str(short_input(tmp_path, name))], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / name).exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # i-PI reads its input, then opens the socket
        assert server.poll() is None, server.communicate()[0][-2000:]
        answered = run_ipi_client(model, str(DOCS / "malonaldehyde.xyz"), unix=str(tmp_path / name),
                                  dtype="float64", wait_s=30)
        output, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0, output[-2000:]
    assert answered >= (STEPS + 1) * BEADS  # every bead of the initial state and of each step

    # i-PI's potential (the mean over beads) at the last step equals SAKECalculator on the beads it wrote
    table = np.loadtxt(tmp_path / "malonaldehyde.out", ndmin=2)
    assert table[:, 0].tolist() == list(range(STEPS + 1))
    beads = [ase.io.read(tmp_path / f"malonaldehyde.pos_{k}.xyz", index=-1) for k in range(BEADS)]
    calc = SAKECalculator(str(model), dtype="float64")
    mean = np.mean([calc.get_potential_energy(b) for b in beads])
    assert table[-1, 5] == pytest.approx(mean, abs=1e-6 * max(1.0, abs(mean)))
    assert not np.allclose(beads[0].positions, beads[1].positions)  # a ring polymer, not 8 copies


def test_no_server_is_a_clear_error(tmp_path):
    model = save_checkpoint(tmp_path / "tiny.pt", perturbed_potential("sake", hidden=8, layers=2))
    with pytest.raises(InputError, match="no i-PI server answered"):
        run_ipi_client(model, "CH3CH2OH", unix=str(tmp_path / "nobody"), wait_s=0.5)



def test_sake_md_ipi_without_a_server_is_one_line(tmp_path):
    from click.testing import CliRunner

    from sake_md.cli import main

    model = save_checkpoint(tmp_path / "tiny.pt", perturbed_potential("sake", hidden=8, layers=2))
    result = CliRunner().invoke(main, ["ipi", "--potential", str(model), "--unix", str(tmp_path / "none"),
                                       "--wait", "0.3"])
    assert result.exit_code == 1
    assert "Error: no i-PI server answered at UNIX socket" in result.output and "Traceback" not in result.output
