"""A bad config exits 2 and names the file and the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

FAKE_LOCK = 'lock-version = "1.0"\ncreated-by = "t"\ndependency-groups = ["train"]\npackages = []\n'
GOOD = """\
[model]
adapter = "model.adapter:predict"
paths = ["."]

[inputs]
seed = 1
count = 4

[inputs.arrays.lr]
shape = [8, 8]
dtype = "uint8"

[environments.train]
backend = "venv"
lock = "pylock.toml"
group = "train"

[environments.infer]
backend = "venv"
lock = "pylock.toml"
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('lock = "pylock.toml"\ngroup', 'lock = "missing.toml"\ngroup'),
            "environments.train.lock: file not found: missing.toml",
        ),
        (
            ('[environments.infer]\nbackend = "venv"', '[environments.infer]\nbackend = "conda"'),
            "environments.infer.backend: must be one of venv, docker, local, endpoint, got 'conda'",
        ),
        (("count = 4", "count = 0"), "inputs.count: must be at least 1"),
        (("count = 4", 'count = "4"'), "inputs.count: must be an integer, not a string"),
        (("seed = 1\n", ""), "inputs.seed: missing (required)"),
        (
            ('"model.adapter:predict"', '"model.adapter.predict"'),
            "model.adapter: must look like 'package.module:function'",
        ),
        (
            ('dtype = "uint8"', 'dtype = "uint9"'),
            "inputs.arrays.lr.dtype: unsupported dtype 'uint9'",
        ),
        (("[inputs]\n", "[inputs]\nsede = 3\n"), "inputs.sede: unknown key"),
        (
            ('dtype = "uint8"', 'dtype = "uint8"\nlayout = "channels_last"'),
            "inputs.arrays.lr.layout: only applies to generator = \"image\" (this is 'uniform')",
        ),
        (
            ('dtype = "uint8"', 'dtype = "uint8"\ngenerator = "image"\nlayout = "channels_last"'),
            "inputs.arrays.lr.layout: needs a shape with a channel axis and two spatial axes "
            "(at least 3 axes), got [8, 8]",
        ),
        (
            ("shape = [8, 8]", 'shape = [8, 8, 3]\ngenerator = "image"\nlayout = "nhwc"'),
            "inputs.arrays.lr.layout: must be one of channels_first, channels_last, got 'nhwc'",
        ),
        (
            (
                '[environments.infer]\nbackend = "venv"\nlock = "pylock.toml"\n',
                "[environments.infer]\n",
            ),
            "environments.infer.lock: missing (required)",
        ),
        (
            ('group = "train"\n', 'group = "train"\n[tolerance]\natol = -1\n'),
            "tolerance.atol: must be 0 or more, got -1",
        ),
        (
            ('group = "train"\n', 'group = "train"\n[tolerance]\npolicy = "fuzzy"\n'),
            "tolerance.policy: must be one of exact, ulp, allclose, decision, psnr, cosine, got "
            "'fuzzy'",
        ),
        (
            (
                'group = "train"\n',
                'group = "train"\n[tolerance.outputs.sr]\npolicy = "psnr"\natol = 1\n',
            ),
            "tolerance.outputs.sr.atol: only applies to policy = 'allclose' (this is 'psnr')",
        ),
        (
            (
                'group = "train"\n',
                'group = "train"\n[tolerance.outputs.p]\npolicy = "decision"\n'
                "min_agreement = 1.5\n",
            ),
            "tolerance.outputs.p.min_agreement: must be between 0 and 1, got 1.5",
        ),
        (
            ('group = "train"\n', 'group = "train"\n[tolerance]\nnoise_factor = 3\n'),
            "tolerance.noise_factor: scales the measured noise, so it needs a calibrated check: "
            "pass --calibrate or set run.calibrate = true",
        ),
        (
            ('group = "train"\n', 'group = "serve"\n'),
            "environments.train.group: no group 'serve' in pylock.toml (it has: main, train)",
        ),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    (tmp_path / "pylock.toml").write_text(FAKE_LOCK)
    cfg = tmp_path / "parity.toml"
    old, new = change
    assert old in GOOD
    cfg.write_text(GOOD.replace(old, new, 1))
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Error: {cfg}: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_three_environments_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pylock.toml").write_text(FAKE_LOCK)
    cfg = tmp_path / "parity.toml"
    cfg.write_text(GOOD + '\n[environments.third]\nbackend = "local"\n')
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 2
    assert "environments: needs exactly two environments" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("parity", "check", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert f"Error: {tmp_path / 'nope.toml'}: config file not found" in result.stderr


def test_invalid_toml_says_where(tmp_path: Path) -> None:
    cfg = tmp_path / "parity.toml"
    cfg.write_text("[model\nadapter = 1\n")
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line 1" in result.stderr


def test_unknown_group_in_a_real_lock_exits_2_before_building(tmp_path: Path, repo: Path) -> None:
    cfg = tmp_path / "parity.toml"
    lock = repo / "locks" / "pylock.toml"
    cfg.write_text(
        GOOD.replace('"pylock.toml"', f'"{lock}"').replace('group = "train"', 'group = "serve"')
    )
    result = run_cli("parity", "check", "--config", str(cfg), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "c").exists()  # nothing was built
    assert f"environments.train.group: no group 'serve' in {lock} (it has: main, train)" in (
        result.stderr
    )


def test_policies_per_output_inherit_the_default_table(tmp_path: Path) -> None:
    from parity.config import load_config
    from parity.policies import TolerancePolicy

    (tmp_path / "pylock.toml").write_text(FAKE_LOCK)
    cfg = tmp_path / "parity.toml"
    cfg.write_text(
        GOOD
        + """
[run]
calibrate = true

[tolerance]
atol = 1e-6
rtol = 1e-5

[tolerance.outputs.logits]
policy = "decision"
top_k = 5
min_agreement = 0.999

[tolerance.outputs.image]
policy = "psnr"
min_db = 45
data_range = 255

[tolerance.outputs.noisy]
noise_factor = 3

[tolerance.outputs.ids]
policy = "exact"
"""
    )
    config = load_config(cfg)
    assert config.calibrate
    assert config.tolerance == TolerancePolicy(atol=1e-6, rtol=1e-5)
    assert config.tolerance_for("other") == config.tolerance
    assert config.tolerance_for("logits").describe() == "decision(top_k=5, min_agreement=0.999)"
    assert config.tolerance_for("image").describe() == "psnr(min_db=45, data_range=255)"
    assert config.tolerance_for("noisy").describe() == (
        "allclose(atol=1e-06, rtol=1e-05, noise_factor=3)"
    )
    assert config.tolerance_for("ids").describe() == "exact"
