"""Every malformed lock in tests/data/malformed exits 2 naming the file, the place and the fault."""

from __future__ import annotations

import tomllib

import pytest
from conftest import ROOT, run_cli

CORPUS = ROOT / "tests" / "data" / "malformed"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text())


def test_the_corpus_and_its_expectations_match() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("expected.toml", "README.md")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_lock_exits_2_with_file_place_and_fault(name: str) -> None:
    path = CORPUS / name
    result = run_cli("envlock", "show", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    place = EXPECTED[name]["place"]
    prefix = f"Error: {path} ({place}): " if place else f"Error: {path}: "
    assert result.stderr.startswith(prefix), result.stderr
    assert EXPECTED[name]["says"] in result.stderr
    assert "Traceback" not in result.stderr
