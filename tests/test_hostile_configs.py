"""Hostile configs and models: each is refused with a short message naming the key or
output, the right exit code, and no traceback; none of them passes by accident."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOCAL_CONFIG, ROOT, run_cli

ADAPTER = """
import numpy as np

def predict(inputs):
    x = inputs["x"].astype(np.float64)
    return {"y": x * 2.0}
"""

CONFIG = LOCAL_CONFIG.format(timeout=120)


def check(cfg: Path, *args: str) -> tuple[int, str]:
    result = run_cli("parity", "check", "--config", str(cfg), "-q", *args, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


def test_a_tolerance_table_for_an_output_the_model_lacks_is_a_config_error(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # `yy` is a typo for `y`: judged under the default tolerance, an off-by-one would pass.
    cfg = write_project(ADAPTER, CONFIG + "\n[tolerance.outputs.yy]\natol = 1\n")
    code, stderr = check(cfg, "--json", str(tmp_path / "r.json"))
    assert code == 2, stderr
    assert "tolerance.outputs.yy: no output 'yy' (the model returns: 'y')" in stderr
    assert len(stderr.strip().splitlines()) == 1

    # The same table for an output that is there is used.
    cfg = write_project(ADAPTER, CONFIG + "\n[tolerance.outputs.y]\natol = 1\n")
    code, stderr = check(cfg, "--json", str(tmp_path / "r.json"))
    assert code == 0, stderr
    (y,) = json.loads((tmp_path / "r.json").read_text())["outputs"]
    assert y["policy_description"] == "allclose(atol=1, rtol=0)"


@pytest.mark.parametrize(
    ("setting", "key", "message"),
    [
        ("[inputs.arrays.x]\nlow = nan", "inputs.arrays.x.low", "must be a finite number"),
        ("[inputs.arrays.x]\nhigh = inf", "inputs.arrays.x.high", "must be a finite number"),
        (
            '[inputs.arrays.x]\ngenerator = "normal"\nstd = nan',
            "inputs.arrays.x.std",
            "must be a finite number",
        ),
        (
            "[inputs.arrays.x]\nlow = -1e308\nhigh = 1e308",
            "inputs.arrays.x.high",
            "the values drawn (low to high) would overflow float32",
        ),
        (
            '[inputs.arrays.x]\ngenerator = "normal"\nstd = 1e38',
            "inputs.arrays.x.std",
            "the values drawn (mean ± 9 std) would overflow float32",
        ),
        ("[run]\ntimeout = nan", "run.timeout", "must be a positive, finite number of seconds"),
        ("[tolerance]\natol = inf", "tolerance.atol", "must be a finite number, got inf"),
        (
            "[tolerance.outputs.y]\natol = inf",
            "tolerance.outputs.y.atol",
            "must be a finite number, got inf",
        ),
    ],
)
def test_a_non_finite_number_is_a_config_error(
    write_project: Callable[..., Path], setting: str, key: str, message: str
) -> None:
    table = setting.partition("\n")[0]
    config = CONFIG.replace("timeout = 120\n", "") if table == "[run]" else CONFIG
    if table in config:  # add the setting to the table the config already has
        config = config.replace(table + "\n", setting + "\n")
    else:
        config += "\n" + setting + "\n"
    cfg = write_project(ADAPTER, config)
    code, stderr = check(cfg)
    assert code == 2, stderr
    assert f"{key}: {message}" in stderr


def test_two_outputs_with_one_name_as_text_are_an_error_not_a_pass(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # Keyed `1` and `"1"`: kept as one name, one of them (here the differing one) would
    # vanish unseen and the check pass.
    adapter = """
    import os
    import numpy as np

    def predict(inputs):
        x = inputs["x"]
        return {1: x, "1": x + (1.0 if os.environ.get("DRIFT") else 0.0)}
    """
    config = CONFIG + '\n[environments.infer.env]\nDRIFT = "1"\n'
    cfg = write_project(adapter, config)
    report = tmp_path / "r.json"
    code, stderr = check(cfg, "--json", str(report))
    assert code == 3, stderr
    data = json.loads(report.read_text())
    assert data["verdict"] == "error"
    assert any("outputs 1 and '1' have the same name '1' as text" in e for e in data["errors"]), (
        data["errors"]
    )


def test_markdown_shows_hostile_names_and_messages_as_text(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # A warning whose class name and message hold HTML and terminal control characters:
    # the summary (rendered by GitHub) must show them, not run them.
    adapter = """
    import os
    import warnings

    Hostile = type("<script>alert(1)</script>\\x1b[31m`", (UserWarning,), {})

    def predict(inputs):
        warnings.warn("<img src=x onerror=alert(1)> \\x1b[2J\\x07 done", Hostile)
        return {"y": inputs["x"] + (1.0 if os.environ.get("DRIFT") else 0.0)}
    """
    config = CONFIG + '\n[environments.infer.env]\nDRIFT = "1"\n'
    cfg = write_project(adapter, config)
    summary = tmp_path / "summary.md"
    code, stderr = check(cfg, "--markdown", str(summary))
    assert code == 1, stderr
    text = summary.read_text(encoding="utf-8")
    assert "| `y` | **fail** (tolerance)" in text
    for raw in ("<script>", "<img", "\x1b", "\x07"):
        assert raw not in text, raw
    # Shown as text, escaped: the class as code, the message as a table cell's text.
    row = next(line for line in text.splitlines() if line.startswith("| infer |"))
    assert row.startswith(
        "| infer | <code>adapter.&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31m`</code> | "
    )
    assert "| &lt;img src=x onerror=alert(1)&gt; \\x1b[2J\\x07 done |" in row


@pytest.mark.parametrize(
    ("table", "entry", "key", "message"),
    [
        ("[run.env]", 'A = "x\\u0000y"', "run.env.A", "cannot hold a NUL character"),
        ("[run.env]", '"A=B" = "1"', "run.env.'A=B'", "must be non-empty, without '='"),
        (
            "[environments.infer.env]",
            'B = "\\u0000"',
            "environments.infer.env.B",
            "cannot hold a NUL character",
        ),
    ],
)
def test_an_environment_variable_no_process_can_have_is_a_config_error(
    write_project: Callable[..., Path], table: str, entry: str, key: str, message: str
) -> None:
    cfg = write_project(ADAPTER, CONFIG + f"\n{table}\n{entry}\n")
    code, stderr = check(cfg)
    assert code == 2, stderr
    assert f"{key}: " in stderr and message in stderr


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            "[inputs.arrays.x]\nshape = [100000, 100000]",
            "inputs.count: 12 samples of 37.3 GiB each make 447 GiB of inputs, over the "
            "limit of 16 GiB (inputs.max_bytes = 17179869184)",
        ),
        (
            "[inputs]\nseed = 7\ncount = 1000000000000",
            "inputs.count: 1000000000000 samples of 48 bytes each make 43.7 TiB of inputs",
        ),
        (
            "[inputs]\nseed = 7\ncount = 12\nmax_bytes = 500",
            "inputs.count: 12 samples of 48 bytes each make 576 bytes of inputs, over the "
            "limit of 500 bytes (inputs.max_bytes = 500)",
        ),
    ],
)
def test_an_input_set_too_large_to_generate_is_refused_before_it_is_generated(
    write_project: Callable[..., Path], inputs: str, message: str
) -> None:
    config = CONFIG
    if inputs.startswith("[inputs.arrays.x]"):
        config = config.replace("[inputs.arrays.x]\nshape = [3, 4]", inputs)
    else:
        config = config.replace("[inputs]\nseed = 7\ncount = 12", inputs)
    assert inputs in config
    cfg = write_project(ADAPTER, config)
    code, stderr = check(cfg)
    assert code == 2, stderr
    assert message in stderr


def test_a_raised_limit_admits_the_input_set(write_project: Callable[..., Path]) -> None:
    config = CONFIG.replace("count = 12", "count = 12\nmax_bytes = 576")
    cfg = write_project(ADAPTER, config)
    code, stderr = check(cfg)
    assert code == 0, stderr


def test_a_bundle_whose_schema_version_is_a_number_says_so(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, CONFIG)
    bundle = tmp_path / "golden"
    result = run_cli(
        "parity", "record", "--config", str(cfg), "--env", "train", "--out", str(bundle)
    )
    assert result.returncode == 0, result.stderr
    meta = bundle / "bundle.json"
    text = meta.read_text()
    assert '"schema_version": "1"' in text
    meta.write_text(text.replace('"schema_version": "1"', '"schema_version": 1'))
    code, stderr = check(cfg, "--against", str(bundle))
    assert code == 2, stderr
    assert "schema_version must be a string such as '1', not int 1" in stderr


def test_a_report_that_cannot_be_written_is_exit_3_naming_it(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, CONFIG)
    (tmp_path / "taken").write_text("a file, not a folder")
    code, err = check(cfg, "--json", str(tmp_path / "taken" / "report.json"))
    assert code == 3
    assert f"could not write {tmp_path / 'taken' / 'report.json'}" in err
    # A folder that does not exist yet is made.
    code, err = check(cfg, "--json", str(tmp_path / "new" / "deeper" / "report.json"))
    assert code == 0, err
    assert (
        json.loads((tmp_path / "new" / "deeper" / "report.json").read_text())["verdict"] == "pass"
    )


def test_a_full_disk_leaves_the_old_report_whole_and_no_partial_file(tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk: writing fails part-way (EFBIG)."""
    report = tmp_path / "report.json"
    report.write_text('{"verdict": "pass"}')
    code = f"""
import resource, sys
from pathlib import Path
from parity.cli import write_whole
from parity.errors import ParityError
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_whole(Path({str(report)!r}), "x" * 100_000)
except ParityError as e:
    print(e)
    sys.exit(3)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith(f"could not write {report}: ")
    assert report.read_text() == '{"verdict": "pass"}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_bug_in_parity_itself_is_one_line_and_exit_3(
    write_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No input is known to crash parity (each one found is fixed above); this stands in
    # for the next one: the check raising what no domain error covers.
    from click.testing import CliRunner

    import parity.cli

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    cfg = write_project(ADAPTER, CONFIG)
    monkeypatch.setattr(parity.cli, "run_check", broken)
    monkeypatch.delenv("PARITY_DEBUG", raising=False)
    result = CliRunner().invoke(parity.cli.main, ["check", "--config", str(cfg), "-q"])
    assert result.exit_code == 3  # not 1, which says the environments differ
    assert result.output == (
        "Error: internal error in parity: TypeError: unsupported operand type(s) for +: "
        "'int' and 'str' (a bug: rerun with PARITY_DEBUG=1 for the traceback and report it)\n"
    )
    monkeypatch.setenv("PARITY_DEBUG", "1")
    result = CliRunner().invoke(parity.cli.main, ["check", "--config", str(cfg), "-q"])
    assert isinstance(result.exception, TypeError)  # the traceback, for the bug report
