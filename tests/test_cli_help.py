"""Every command documents itself: `--help` works, says what it does, and shows an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from envlock.cli import main as envlock_main
from parity.cli import main as parity_main

COMMANDS = [(envlock_main, name) for name in envlock_main.commands] + [
    (parity_main, name) for name in parity_main.commands
]


@pytest.mark.parametrize(("group", "name"), COMMANDS, ids=[n for _, n in COMMANDS])
def test_command_has_help_with_an_example(group: click.Group, name: str) -> None:
    command = group.commands[name]
    assert command.help, f"{name} has no help"
    assert "Example:" in command.help, f"{name}'s help shows no example"
    result = CliRunner().invoke(group, [name, "--help"])
    assert result.exit_code == 0
    # click wraps help text: compare words, not line breaks.
    assert " ".join(command.help.splitlines()[0].split()) in " ".join(result.output.split())


def test_the_commands_users_were_promised_exist() -> None:
    assert {"lock", "materialize", "fetch", "build", "verify", "fingerprint"} <= set(
        envlock_main.commands
    )
    assert "check" in parity_main.commands


def test_the_command_reference_is_current() -> None:
    """docs/COMMANDS.md is generated from the commands: a changed option or help text
    without it regenerated fails here (and in `make lint`), with the diff."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "command_reference.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
