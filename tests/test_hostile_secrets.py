"""Hostile models and parity's secrets: a worker gets only the environment variables it
needs, and no value of a secret-looking variable of parity's own environment reaches a
report, the terminal or a bundle, however the model puts it there (an error, an output's
name, a warning, a path)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOCAL_CONFIG, failures, run_cli

CONFIG = LOCAL_CONFIG.format(timeout=120)
TOKEN = "tok-8f3a9c2e71d4b5"
# A passphrase that JSON (\u00e4), HTML and XML (&amp; &#x27;) write escaped: only a
# redaction of the data before it is written finds it there.
PASSWORD = "s3cr&t'pässwörd"
SECRETS = ("MY_API_TOKEN", "MY_DB_PASSWORD", "NVIDIA_PAT")
# Set in parity's environment for every check here: three secrets (one with a numerics
# prefix), a numerics variable, and a variable of some other program.
ENV = {
    "MY_API_TOKEN": TOKEN,
    "MY_DB_PASSWORD": PASSWORD,
    "NVIDIA_PAT": "nvpat-5c1e0b7d93aa",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "MY_APP_MODE": "canary-mode-7d2e",
}

# Fails, naming (and quoting) every one of parity's variables it can see that it should
# not see unasked.
SNOOPING = """
import os
import numpy as np

def predict(inputs):
    names = ("MY_API_TOKEN", "MY_DB_PASSWORD", "NVIDIA_PAT", "MY_APP_MODE")
    seen = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    if seen:
        raise RuntimeError("saw " + ", ".join(seen))
    return {"y": inputs["x"].astype(np.float64) * 2.0}
"""


def check(cfg: Path, out: Path, *args: str) -> tuple[int, str, str, dict[str, str]]:
    """`parity check` with every report format: exit code, stdout, stderr, and each
    report file's text by format."""
    files = {kind: out / f"report.{kind}" for kind in ("json", "md", "html", "xml")}
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--json",
        str(files["json"]),
        "--markdown",
        str(files["md"]),
        "--html",
        str(files["html"]),
        "--junit",
        str(files["xml"]),
        *args,
        env=ENV,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    texts = {kind: p.read_text(encoding="utf-8") for kind, p in files.items() if p.exists()}
    return result.returncode, result.stdout, result.stderr, texts


def assert_no_secret(stdout: str, stderr: str, texts: dict[str, str]) -> None:
    """None of the texts holds the value of a secret of parity's, not even escaped."""
    shown = {"stdout": stdout, "stderr": stderr, **texts}
    if "json" in texts:
        shown["json, decoded"] = json.dumps(json.loads(texts["json"]), ensure_ascii=False)
    for kind in ("md", "html", "xml"):
        if kind in texts:
            shown[f"{kind}, unescaped"] = html.unescape(texts[kind]).replace("\\", "")
    for where, text in shown.items():
        for name in SECRETS:
            assert ENV[name] not in text, f"{where} holds the value of {name}"


def test_a_worker_gets_numerics_variables_but_no_secret_or_other_variable_unless_named(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(SNOOPING, CONFIG)
    code, stdout, stderr, texts = check(cfg, tmp_path)
    assert code == 0, stderr
    report = json.loads(texts["json"])
    for name in ("train", "infer"):  # numerics variables still reach the worker
        assert report["environments"][name]["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    # Named in run.pass_env, secrets reach the workers, and no report shows their values.
    cfg.write_text(CONFIG + 'pass_env = ["MY_API_TOKEN", "MY_DB_PASSWORD"]\n')
    code, stdout, stderr, texts = check(cfg, tmp_path)
    assert code == 3, stderr
    saw = "saw MY_API_TOKEN=[redacted], MY_DB_PASSWORD=[redacted]"
    errors = failures(json.loads(texts["json"])["errors"])
    assert errors and all(saw in e for e in errors), errors
    assert not any("NVIDIA_PAT" in e or "MY_APP_MODE" in e for e in errors), errors
    assert_no_secret(stdout, stderr, texts)
    for kind in ("md", "html", "xml"):
        assert "saw MY_API_TOKEN=" in texts[kind] and "redacted" in texts[kind], kind
    assert saw in stdout and saw in stderr


def test_a_token_set_in_the_config_for_the_model_is_never_shown_either(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # Not from parity's environment: [run.env] gives it to the workers, who can print it.
    token = "hf_cfg_5e1d9a0c7b"
    adapter = """
    import os

    def predict(inputs):
        print("using", os.environ["HF_TOKEN"])
        raise RuntimeError(f"the hub refused {os.environ['HF_TOKEN']}")
    """
    cfg = write_project(adapter, CONFIG + f'\n[run.env]\nHF_TOKEN = "{token}"\n')
    code, stdout, stderr, texts = check(cfg, tmp_path)
    assert code == 3, stderr
    assert set(texts) == {"json", "md", "html", "xml"}
    for where, text in {"stdout": stdout, "stderr": stderr, **texts}.items():
        assert token not in text, where
    assert "the hub refused [redacted]" in stderr
    errors = failures(json.loads(texts["json"])["errors"])
    assert errors and all("the hub refused [redacted]" in e for e in errors), errors


def test_an_output_named_after_a_secret_and_a_warning_quoting_it_are_redacted(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    adapter = """
    import os
    import warnings
    import numpy as np

    def predict(inputs):
        token = os.environ["MY_API_TOKEN"]
        warnings.warn(f"calling home with {token} and {os.environ['MY_DB_PASSWORD']}")
        x = inputs["x"].astype(np.float64)
        return {"y": x, token: x + (1.0 if os.environ.get("DRIFT") else 0.0)}
    """
    config = CONFIG + 'pass_env = ["MY_API_TOKEN", "MY_DB_PASSWORD"]\n'
    config += '\n[environments.infer.env]\nDRIFT = "1"\n'
    cfg = write_project(adapter, config)
    code, stdout, stderr, texts = check(cfg, tmp_path)
    assert code == 1, stderr  # the secret-named output differs: a failure, shown redacted
    assert_no_secret(stdout, stderr, texts)
    report = json.loads(texts["json"])
    assert {o["name"] for o in report["outputs"]} == {"y", "[redacted]"}
    messages = [w["message"] for w in report["warnings"]]
    assert any("calling home with [redacted] and [redacted]" in m for m in messages), messages
    assert "[redacted]" in stdout
    for kind in ("md", "html", "xml"):
        assert "redacted" in texts[kind], kind

    # The JSON report on stdout is redacted too.
    result = run_cli("parity", "check", "--config", str(cfg), "--json", "-", env=ENV)
    assert result.returncode == 1, result.stderr
    assert_no_secret(result.stdout, result.stderr, {"json": result.stdout})
    assert {o["name"] for o in json.loads(result.stdout)["outputs"]} == {"y", "[redacted]"}


def test_a_recording_never_writes_or_prints_a_secret(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # A model that fails quoting the secret: the error on stderr is redacted, exit 3.
    failing = SNOOPING.replace("raise RuntimeError", "raise ValueError")
    cfg = write_project(failing, CONFIG + 'pass_env = ["MY_API_TOKEN", "MY_DB_PASSWORD"]\n')
    out = tmp_path / "golden"
    result = run_cli("parity", "record", "--config", str(cfg), "--out", str(out), env=ENV)
    assert result.returncode == 3, result.stderr
    assert "ValueError: saw MY_API_TOKEN=[redacted], MY_DB_PASSWORD=[redacted]" in result.stderr
    assert_no_secret(result.stdout, result.stderr, {})
    assert not out.exists()

    # An output named after the secret: a bundle would keep the name, so none is written.
    naming = """
    import os

    def predict(inputs):
        return {"y": inputs["x"], os.environ["MY_API_TOKEN"]: inputs["x"]}
    """
    cfg = write_project(naming, CONFIG + 'pass_env = ["MY_API_TOKEN"]\n')
    result = run_cli("parity", "record", "--config", str(cfg), "--out", str(out), env=ENV)
    assert result.returncode == 3, result.stderr
    assert "the output '[redacted]' is named after the value of a secret" in result.stderr
    assert_no_secret(result.stdout, result.stderr, {})
    assert not out.exists()

    # A bundle recorded in a folder named after the secret: neither its files nor the
    # message name it, and it still checks.
    cfg = write_project(SNOOPING, CONFIG)
    out = tmp_path / f"golden-{TOKEN}"
    result = run_cli("parity", "record", "--config", str(cfg), "--out", str(out), env=ENV)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert "golden-[redacted]" in result.stdout
    for path in out.iterdir():
        if path.suffix == ".json":
            assert TOKEN not in path.read_text(encoding="utf-8"), path.name
    result = run_cli("parity", "check", "--config", str(cfg), "--against", str(out), "-q", env=ENV)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "key", "message"),
    [
        ('pass_env = "HF_HOME"', "run.pass_env", "must be a list of environment variable names"),
        ("pass_env = [1]", "run.pass_env[0]", "must be a string"),
        (
            'pass_env = ["HF_HOME", "MY-TOKEN"]',
            "run.pass_env[1]",
            "'MY-TOKEN' is not an environment variable name",
        ),
        ('pass_env = ["PYTHONPATH"]', "run.pass_env[0]", "PYTHONPATH would show the workers"),
    ],
)
def test_a_bad_pass_env_is_a_config_error_naming_the_key(
    write_project: Callable[..., Path], setting: str, key: str, message: str
) -> None:
    cfg = write_project(SNOOPING, CONFIG + setting + "\n")
    result = run_cli("parity", "check", "--config", str(cfg), "-q", env=ENV)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{key}: {message}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_search_case_never_holds_a_secret(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    adapter = """
    import os
    import numpy as np

    def predict(inputs):
        x = inputs["x"].astype(np.float64)
        drift = 1e-7 * x.sum(axis=(1, 2)) if os.environ.get("DRIFT") else 0.0
        return {os.environ["MY_API_TOKEN"]: x.mean(axis=(1, 2)) + drift}
    """
    config = CONFIG + 'pass_env = ["MY_API_TOKEN"]\n\n[environments.infer.env]\nDRIFT = "1"\n'
    cfg = write_project(adapter, config)
    case = tmp_path / "case"
    result = run_cli(
        "parity",
        "search",
        "--config",
        str(cfg),
        "--examples",
        "3",
        "--out",
        str(case),
        "--json",
        str(tmp_path / "search.json"),
        env=ENV,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    found = json.loads((case / "case.json").read_text(encoding="utf-8"))
    assert found["output"] == "[redacted]", found
    texts = {"json": (tmp_path / "search.json").read_text(encoding="utf-8")}
    texts["case"] = (case / "case.json").read_text(encoding="utf-8")
    assert_no_secret(result.stdout, result.stderr, texts)
