"""Every `sake-md` command the README shows names a real subcommand with real options and values that parse
(a README that lies is a bug). Running them is the other tests' job, on tiny data."""

import re
import shlex
from pathlib import Path

import click
import pytest

from sake_md.cli import main

README = Path(__file__).parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if "sake-md " in line and not line.startswith("pip "):
                commands.append(line[line.index("sake-md "):].split(" && ")[0].split(" | ")[0].split(" & ")[0])
    return commands


def test_the_readme_shows_commands():
    assert len(readme_commands()) > 15


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    args = [a for a in shlex.split(command)[1:] if a != "..."]
    args = [a for a in args if not (a.startswith("[") and a.endswith("]"))]  # [--json] etc.: optional
    name, rest = args[0], args[1:]
    assert name in main.commands, f"{command}: no subcommand {name!r}"
    sub = main.commands[name]
    try:
        sub.make_context(name, rest)  # option names, choices and types
    except click.MissingParameter as e:  # `sake-md train ... --resume` elides the options shown above it
        assert "..." in command, f"{command}: {e}"
    except click.BadParameter as e:  # README paths need not exist here
        assert "does not exist" in str(e), f"{command}: {e}"
