"""Golden bundles: `parity record` in one environment, `parity check --against` later.

Both environments use the `local` backend (this interpreter), so each run takes a couple
of seconds. One bundle is recorded per module and copied by the tests that alter it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

from envlock.environments import EnvironmentSpec
from envlock.lockfile import LockedEnv, LockedPackage
from parity.bundle import Bundle, _write_manifest, load_bundle
from parity.check import _bundle_run, _old_bundle_note
from parity.errors import BundleError
from parity.judging.versions import version_diffs
from parity.report import EnvironmentSummary
from parity.runs.replay import EnvRun, LockView

ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    x = inputs["x"]
    y = x * np.float32(2)
    if os.environ.get("DRIFT"):
        y[0, 0, 0] += np.float32(0.5)        # one element per batch moves (3 batches)
    return {"y": y, "total": x.sum(axis=(1, 2))}
"""

CONFIG = LOCAL_CONFIG.format(timeout=120)
DRIFT_CONFIG = CONFIG.replace(
    '[environments.infer]\nbackend = "local"\n',
    '[environments.infer]\nbackend = "local"\n\n[environments.infer.env]\nDRIFT = "1"\n',
)
OTHER_INPUTS_CONFIG = CONFIG.replace("seed = 7", "seed = 8")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with three configs (same, drifting, other inputs) and a recorded bundle
    `golden/` of its `train` environment."""
    root = tmp_path_factory.mktemp("bundle-project")
    (root / "src").mkdir()
    (root / "src" / "adapter.py").write_text(ADAPTER)
    (root / "parity.toml").write_text(CONFIG)
    (root / "drift.toml").write_text(DRIFT_CONFIG)
    (root / "other.toml").write_text(OTHER_INPUTS_CONFIG)
    assert "DRIFT" in DRIFT_CONFIG and "seed = 8" in OTHER_INPUTS_CONFIG
    result = run_cli("parity", "record", "--env", "train", "--out", "golden", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recorded 'train': 2 outputs on 12 inputs (sha256:")
    return root


def copy_bundle(project: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "golden"
    shutil.copytree(project / "golden", bundle)
    return bundle


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bundle_holds_what_was_recorded_and_a_manifest_of_it(project: Path) -> None:
    folder = project / "golden"
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json",
        "fingerprint.json",
        "manifest.json",
        "outputs.npz",
    ]
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["schema_version"] == "1"
    assert meta["adapter"] == "adapter:predict"
    assert meta["environment"]["name"] == "train"
    assert meta["environment"]["backend"] == "local"
    assert meta["inputs"]["seed"] == 7 and meta["inputs"]["count"] == 12
    assert meta["inputs"]["digest"].startswith("sha256:")
    assert meta["tolerance"]["default"]["kind"] == "allclose"
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert set(manifest) == {"bundle.json", "fingerprint.json", "outputs.npz"}
    for name, entry in manifest.items():
        assert entry == {"sha256": sha256(folder / name), "size": (folder / name).stat().st_size}


def test_check_against_the_bundle_passes_without_the_training_environment(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    md = tmp_path / "report.md"
    result = run_cli(
        "parity",
        "check",
        "--against",
        "golden",
        "--json",
        str(out),
        "--markdown",
        str(md),
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "parity check: PASS" in result.stdout
    assert "against: bundle golden (train, recorded " in result.stdout
    # Only the inference side ran: the bundle stands in for training.
    assert "[infer] running 12 inputs" in result.stderr
    assert "[train]" not in result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert (report["reference"], report["candidate"]) == ("train", "infer")
    assert set(report["environments"]) == {"train", "infer"}
    assert report["against"]["path"] == "golden"
    assert report["against"]["environment"] == "train"
    assert report["against"]["manifest_digest"] == sha256(project / "golden" / "manifest.json")
    assert (
        report["inputs"]["digest"]
        == json.loads((project / "golden" / "bundle.json").read_text())["inputs"]["digest"]
    )
    assert {o["name"]: o["passed"] for o in report["outputs"]} == {"total": True, "y": True}
    assert (
        f"train is the golden bundle `golden` (recorded {report['against']['created']}, "
        f"manifest `{report['against']['manifest_digest']}`)." in md.read_text()
    )


def test_a_check_of_two_live_environments_has_no_against(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = run_cli("parity", "check", "--json", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "against" not in json.loads(out.read_text())


def test_a_drifting_candidate_fails_against_the_bundle(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        "drift.toml",
        "--against",
        "golden",
        "--json",
        str(out),
        cwd=project,
    )
    assert result.returncode == 1, result.stderr
    assert "parity check: FAIL" in result.stdout
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert {o["name"]: o["passed"] for o in report["outputs"]} == {"total": True, "y": False}
    failed = next(o for o in report["outputs"] if o["name"] == "y")
    assert (failed["mismatched"], failed["max_abs_diff"]) == (3, 0.5)
    assert report["reasons"] == [
        "output 'y': 3 of 144 elements beyond atol=0, rtol=0 (max abs diff 0.5)"
    ]


def test_an_archive_works_like_the_folder(project: Path, tmp_path: Path) -> None:
    archive = tmp_path / "golden.tar.gz"
    result = run_cli("parity", "record", "--out", str(archive), "--archive", "-q", cwd=project)
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tf:
        assert sorted(tf.getnames()) == [
            "bundle.json",
            "fingerprint.json",
            "manifest.json",
            "outputs.npz",
        ]
    out = tmp_path / "report.json"
    result = run_cli(
        "parity", "check", "--against", str(archive), "--json", str(out), "-q", cwd=project
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert report["against"]["path"] == str(archive)
    assert report["reference"] == "train"
    result = run_cli(
        "parity", "check", "--config", "drift.toml", "--against", str(archive), "-q", cwd=project
    )
    assert result.returncode == 1, result.stderr


def test_an_archive_of_the_folder_itself_is_read_too(project: Path, tmp_path: Path) -> None:
    archive = tmp_path / "golden.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((project / "golden").iterdir()):
            zf.write(f, f"golden/{f.name}")
    with load_bundle(archive) as bundle:
        extracted = bundle.root
        assert bundle.environment.name == "train"
        assert sorted(bundle.outputs) == ["total", "y"]
        assert bundle.outputs["y"].shape == (12, 3, 4)
    assert not extracted.exists()  # closing removes the extraction


def test_a_tampered_output_is_refused_naming_the_file_and_both_digests(
    project: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(project, tmp_path)
    outputs = bundle / "outputs.npz"
    expected = sha256(outputs)
    data = bytearray(outputs.read_bytes())
    data[-40] ^= 0x01  # one bit, same size: only the digest can tell
    outputs.write_bytes(bytes(data))
    found = sha256(outputs)
    result = run_cli("parity", "check", "--against", str(bundle), "-q", cwd=project)
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {bundle}: outputs.npz does not match the manifest: "
        f"expected {expected}, found {found}\n"
    )
    assert result.stdout == ""


def test_a_bundle_from_a_newer_parity_is_refused(project: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(project, tmp_path)
    meta = bundle / "bundle.json"
    meta.write_text(meta.read_text().replace('"schema_version": "1"', '"schema_version": "99"'))
    result = run_cli("parity", "check", "--against", str(bundle), "-q", cwd=project)
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {bundle}: written by a newer parity (bundle schema_version 99); this parity "
        "reads schema_version 1: upgrade parity to read it\n"
    )


def test_a_file_beside_the_manifest_is_refused(project: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(project, tmp_path)
    (bundle / "extra.py").write_text("print('hello')\n")
    with pytest.raises(BundleError, match=r"extra\.py is not in the bundle's manifest$"):
        load_bundle(bundle)


def test_an_edited_bundle_json_is_caught_by_the_manifest(project: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(project, tmp_path)
    meta = bundle / "bundle.json"
    meta.write_text(meta.read_text().replace('"adapter:predict"', '"adapter:other"'))
    with pytest.raises(BundleError, match=r"bundle\.json does not match the manifest"):
        load_bundle(bundle)


def _archive_with(
    path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_an_archive_member_escaping_its_folder_is_refused(project: Path, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    archive = _archive_with(tmp_path / "evil.tar.gz", "../escape.txt")
    result = run_cli(
        "parity", "check", "--against", str(archive), "-q", cwd=project, env={"TMPDIR": str(temp)}
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {archive}: refused member '../escape.txt' (absolute or escaping path)\n"
    )
    assert not (tmp_path / "escape.txt").exists()
    assert list(temp.iterdir()) == []  # the temporary extraction is gone too


@pytest.mark.parametrize(
    ("name", "kind", "link", "why"),
    [
        ("/etc/escape", tarfile.REGTYPE, "", "absolute or escaping path"),
        ("a/../../escape", tarfile.REGTYPE, "", "absolute or escaping path"),
        ("bundle.json", tarfile.SYMTYPE, "/etc/passwd", "a link or device"),
        ("bundle.json", tarfile.LNKTYPE, "manifest.json", "a link or device"),
        ("dev", tarfile.CHRTYPE, "", "a link or device"),
        # Stricter than tarfile's "data" filter, which lets both of these through: a `..`
        # that stays inside, and a symbolic link to a file of the bundle.
        ("a/../bundle.json", tarfile.REGTYPE, "", "absolute or escaping path"),
        ("bundle.json", tarfile.SYMTYPE, "manifest.json", "a link or device"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, name: str, kind: bytes, link: str, why: str
) -> None:
    archive = _archive_with(tmp_path / "evil.tar.gz", name, kind=kind, link=link)
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=f"refused member {name!r} \\({why}"):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


def test_a_bundle_of_another_input_set_is_refused(project: Path) -> None:
    result = run_cli(
        "parity", "check", "--config", "other.toml", "--against", "golden", "-q", cwd=project
    )
    assert result.returncode == 2
    bundle_digest = json.loads((project / "golden" / "bundle.json").read_text())["inputs"]["digest"]
    assert result.stderr.startswith(
        f"Error: golden was recorded on a different input set: the bundle's {bundle_digest} "
        "(seed 7, 12 samples), the config's sha256:"
    )
    assert result.stderr.endswith(" (seed 8, 12 samples)\n")


def test_record_refuses_to_overwrite_a_bundle(project: Path) -> None:
    result = run_cli("parity", "record", "--out", "golden", "-q", cwd=project)
    assert result.returncode == 2
    assert result.stderr == "Error: golden is not empty; pass --overwrite to replace it\n"


def test_record_of_an_unknown_environment_is_a_usage_error(project: Path) -> None:
    result = run_cli("parity", "record", "--env", "serve", "--out", "x", "-q", cwd=project)
    assert result.returncode == 2
    assert result.stderr == "Error: parity.toml: no environment 'serve' (have: train, infer)\n"
    assert not (project / "x").exists()


def test_record_of_a_failing_model_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "adapter.py").write_text(
        textwrap.dedent(
            """\
            def predict(inputs):
                raise RuntimeError("no weights")
            """
        )
    )
    (tmp_path / "parity.toml").write_text(CONFIG)
    result = run_cli(
        "parity", "record", "--out", "golden", "-q", cwd=tmp_path, env={"TMPDIR": str(tmp_path)}
    )
    assert result.returncode == 3
    # Quiet, it says only where it kept the worker's log (the evidence), and why it failed.
    kept, error = result.stderr.split("\n", 1)
    assert kept.startswith(f"parity: work folder kept: {tmp_path}/parity-"), result.stderr
    assert (Path(kept.split(": ", 2)[2]) / "train" / "worker.log").is_file()
    assert error.startswith(
        "Error: environment 'train': the model failed in the worker (predict): "
        "RuntimeError: no weights"
    )
    assert not (tmp_path / "golden").exists()
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("parity-"))
    assert left == ["parity.toml", "src"]


# The training environment is gone by deploy time: its lock deleted, or its table removed.
TRAIN_TABLE = '[environments.train]\nbackend = "local"\n\n'
GONE_LOCK_CONFIG = CONFIG.replace(
    TRAIN_TABLE,
    '[environments.train]\nbackend = "venv"\nlock = "locks/train.toml"\ngroup = "train"\n\n',
)
NO_TRAIN_CONFIG = CONFIG.replace(TRAIN_TABLE, "").replace("[run]\n", '[run]\nreference = "train"\n')


def _check_without_train(project: Path, tmp_path: Path, config: str) -> tuple[str, dict]:
    """`parity check --against golden` with `config`: its stderr and JSON report."""
    (project / "deploy.toml").write_text(config)
    out = tmp_path / "report.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        "deploy.toml",
        "--against",
        "golden",
        "--json",
        str(out),
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "parity check: PASS" in result.stdout
    assert "[infer] running 12 inputs" in result.stderr and "[train]" not in result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert (report["reference"], report["candidate"]) == ("train", "infer")
    assert report["against"]["environment"] == "train"
    assert {o["name"]: o["passed"] for o in report["outputs"]} == {"total": True, "y": True}
    return result.stderr, report


@pytest.mark.parametrize(
    ("config", "why", "plain_error"),
    [
        (
            GONE_LOCK_CONFIG,
            "environments.train.lock: file not found: locks/train.toml (not needed: the "
            "bundle stands in)",
            "Error: deploy.toml: environments.train.lock: file not found: locks/train.toml\n",
        ),
        (
            NO_TRAIN_CONFIG,
            "the config has no environment 'train' (not needed)",
            "Error: deploy.toml: environments: no environment 'train' (run.reference names it; "
            "have: infer): a check needs two environments; to check infer against a bundle "
            "recorded in train, pass --against BUNDLE\n",
        ),
        (
            CONFIG.replace(TRAIN_TABLE, ""),
            "the config names no reference environment (not needed)",
            "Error: deploy.toml: environments: needs exactly two environments (training and "
            "inference), found 1 (infer); to check it against a bundle recorded in the other, "
            "pass --against BUNDLE\n",
        ),
    ],
    ids=["train-lock-deleted", "train-table-removed", "train-and-reference-removed"],
)
def test_check_against_needs_no_training_environment_in_the_config(
    project: Path, tmp_path: Path, config: str, why: str, plain_error: str
) -> None:
    assert config != CONFIG
    stderr, report = _check_without_train(project, tmp_path, config)
    assert f"reference: train as recorded in golden ({report['against']['created']}); {why}" in (
        stderr
    )
    # Without a bundle the training environment is needed: the same config is refused.
    plain = run_cli("parity", "check", "--config", "deploy.toml", "-q", cwd=project)
    assert plain.returncode == 2
    assert plain.stderr == plain_error


def test_without_the_training_environment_a_drift_still_fails_against_the_bundle(
    project: Path,
) -> None:
    drifting = NO_TRAIN_CONFIG.replace(
        '[environments.infer]\nbackend = "local"\n',
        '[environments.infer]\nbackend = "local"\n\n[environments.infer.env]\nDRIFT = "1"\n',
    )
    assert "DRIFT" in drifting
    (project / "deploy-drift.toml").write_text(drifting)
    result = run_cli(
        "parity", "check", "--config", "deploy-drift.toml", "--against", "golden", cwd=project
    )
    assert result.returncode == 1, result.stderr
    assert "parity check: FAIL" in result.stdout


def test_against_still_needs_the_checked_environments_lock(project: Path) -> None:
    (project / "gone-infer.toml").write_text(
        CONFIG.replace(
            '[environments.infer]\nbackend = "local"\n',
            '[environments.infer]\nbackend = "venv"\nlock = "locks/infer.toml"\n',
        )
    )
    result = run_cli(
        "parity", "check", "--config", "gone-infer.toml", "--against", "golden", cwd=project
    )
    assert result.returncode == 2
    assert result.stderr == (
        "Error: gone-infer.toml: environments.infer.lock: file not found: locks/infer.toml\n"
    )


def test_env_without_against_is_a_usage_error(project: Path) -> None:
    result = run_cli("parity", "check", "--env", "infer", cwd=project)
    assert result.returncode == 2
    assert "Error: --env names the environment to check against a bundle: add --against" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        ("../escape.txt", 0o100644, "absolute or escaping path"),
        ("C:/escape.txt", 0o100644, "absolute or escaping path"),
        ("bundle.json", 0o120777, "not a file or folder"),  # a symlink
    ],
)
def test_unsafe_zip_members_are_refused(tmp_path: Path, name: str, mode: int, why: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, "/etc/passwd")
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=f"refused member {name!r} \\({why}\\)"):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def _lock() -> LockedEnv:
    return LockedEnv(
        path=Path("pylock.toml"),
        digest="sha256:" + "a" * 64,
        flavor="pylock",
        requires_python=None,
        groups=("main", "train"),
        packages=(
            LockedPackage("six", "1.17.0", None),
            LockedPackage("iniconfig", "2.1.0", "'train' in dependency_groups"),
        ),
    )


def _fingerprint(*packages: tuple[str, str]) -> dict[str, object]:
    return {"distributions": [{"name": n, "version": v} for n, v in packages]}


@pytest.mark.parametrize(("digest", "expected"), [("sha256:" + "a" * 64, True), (None, False)])
def test_a_train_only_package_is_expected_when_the_bundle_shares_the_lock(
    digest: str | None, expected: bool
) -> None:
    lock = _lock()
    summary = dataclasses.replace(_summary_of("train"), lock_digest=digest)
    bundle = Bundle(
        path=Path("golden"),
        root=Path("golden"),
        schema_version="1",
        created="2026-01-01T00:00:00Z",
        config="parity.toml",
        adapter="adapter:predict",
        environment=summary,
        inputs={"digest": "sha256:" + "0" * 64},
        tolerance={},
        fingerprint=_fingerprint(("six", "1.17.0"), ("iniconfig", "2.1.0")),
        outputs={},
        manifest_digest="sha256:" + "1" * 64,
    )
    cand = EnvRun(
        EnvironmentSpec("infer", "venv", Path("pylock.toml"), "main"),
        lock=lock,
        fingerprint=_fingerprint(("six", "1.17.0")),
    )
    diffs = version_diffs(_bundle_run(bundle, cand), cand)
    assert [(d.name, d.versions, d.expected) for d in diffs] == [
        ("iniconfig", {"train": "2.1.0", "infer": None}, expected)
    ]
    if expected:
        assert diffs[0].note.startswith("only in the 'train' group, which infer does not install")


def test_version_diffs_take_envlocks_reason_whatever_the_values_hold() -> None:
    def run(name: str, numpy: str, python: str, threads: str) -> EnvRun:
        return EnvRun(
            EnvironmentSpec(name, "venv", Path("pylock.toml"), "main"),
            fingerprint={
                "distributions": [{"name": "numpy", "version": numpy}],
                "python": {"version": python},
                "env": {"OMP_NUM_THREADS": threads},
            },
        )

    diffs = version_diffs(
        run("train", "2.4.6", "3.11.7", "1; 2"), run("infer", "1.26.4", "3.11.2", "4")
    )
    assert [(d.name, d.versions, d.severity, d.note) for d in diffs] == [
        (
            "numpy",
            {"train": "2.4.6", "infer": "1.26.4"},
            "numerics",
            "NumPy 2 changed type promotion (NEP 50): NumPy scalars keep their dtype (a float64 "
            "scalar no longer downcasts to an array's float32; an int64 one no longer leaves uint8 "
            "arithmetic to wrap around), so preprocessing can change dtype, last bits or whole "
            "values. Install the same version in both (one lock).",
        ),
        (
            "python",
            {"train": "3.11.7", "infer": "3.11.2"},
            "runtime",
            "build both environments from the same base and interpreter.",
        ),
        (
            "env OMP_NUM_THREADS",
            {"train": "1; 2", "infer": "4"},
            "numerics",
            "thread counts change summation order. Pin them (parity's run.threads, or "
            "OMP/MKL/OPENBLAS_NUM_THREADS) to the same value.",
        ),
    ]


def test_version_diffs_list_every_package_however_few_the_environments_share() -> None:
    def run(name: str, packages: dict[str, str]) -> EnvRun:
        return EnvRun(
            EnvironmentSpec(name, "venv", Path("pylock.toml"), "main"),
            fingerprint={"distributions": [{"name": n, "version": v} for n, v in packages.items()]},
        )

    others = {f"pkg-{i:02d}": "1.0" for i in range(58)}
    diffs = version_diffs(
        run("train", {"numpy": "2.4.6", "six": "1.17.0", **others}),
        run("infer", {"numpy": "1.26.4", "six": "1.17.0", "iniconfig": "2.1.0"}),
    )
    assert [d.name for d in diffs] == ["iniconfig", "numpy", *others]
    numpy = diffs[1]
    assert (numpy.versions, numpy.severity) == ({"train": "2.4.6", "infer": "1.26.4"}, "numerics")
    assert diffs[0].versions == {"train": None, "infer": "2.1.0"}


def test_an_image_shape_that_looks_channels_last_is_warned_about_on_stderr(
    project: Path,
) -> None:
    image = 'shape = [4, 4, 3]\ngenerator = "image"'
    looks_last = CONFIG.replace("shape = [3, 4]", image)
    assert looks_last != CONFIG
    (project / "looks-last.toml").write_text(looks_last)
    (project / "says-last.toml").write_text(
        looks_last.replace(image, image + '\nlayout = "channels_last"')
    )
    warned = run_cli("parity", "check", "--config", "looks-last.toml", cwd=project)
    assert warned.returncode == 0, warned.stderr
    assert (
        "warning: inputs.arrays.x: shape [4, 4, 3] looks channels-last, but images are drawn "
        'with the last two axes spatial (4 images of 4x3 pixels); set layout = "channels_last"'
    ) in warned.stderr
    said = run_cli("parity", "check", "--config", "says-last.toml", "--json", "-", cwd=project)
    assert said.returncode == 0, said.stderr
    assert "looks channels-last" not in said.stderr
    report = json.loads(said.stdout)
    assert_valid_report(report)
    assert report["inputs"]["arrays"]["x"]["layout"] == "channels_last"


def _train_lock(digest: str, numpy: str = "2.4.6") -> LockedEnv:
    """A lock of `main` (six, numpy) and a `train` group (tqdm), at `digest`."""
    return LockedEnv(
        path=Path("pylock.toml"),
        digest=digest,
        flavor="pylock",
        requires_python=None,
        groups=("main", "train"),
        packages=(
            LockedPackage("six", "1.17.0", None),
            LockedPackage("numpy", numpy, None),
            LockedPackage("tqdm", "4.67.1", "'train' in dependency_groups"),
        ),
    )


def _bundle_of(summary: EnvironmentSummary, fingerprint: dict[str, object], lock: object) -> Bundle:
    return Bundle(
        path=Path("golden"),
        root=Path("golden"),
        schema_version="1",
        created="2026-01-01T00:00:00Z",
        config="parity.toml",
        adapter="adapter:predict",
        environment=summary,
        inputs={"digest": "sha256:" + "0" * 64},
        tolerance={},
        fingerprint=fingerprint,
        outputs={},
        manifest_digest="sha256:" + "1" * 64,
        lock=lock,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("cand_numpy", ["2.4.6", "1.26.4"])
def test_a_check_against_a_bundle_judges_versions_as_a_live_check_does(cand_numpy: str) -> None:
    # The training lock and the inference lock differ (another numpy, as in the
    # numpy-drift example), so the bundle's lock digest is not the candidate's: the
    # bundle's recorded view of its lock must explain tqdm as the live check does.
    train_lock = _train_lock("sha256:" + "a" * 64)
    infer_lock = _train_lock("sha256:" + "b" * 64, numpy=cand_numpy)
    train_fp = _fingerprint(("six", "1.17.0"), ("numpy", "2.4.6"), ("tqdm", "4.67.1"))
    infer_fp = _fingerprint(("six", "1.17.0"), ("numpy", cand_numpy))
    live_ref = EnvRun(
        EnvironmentSpec("train", "venv", Path("pylock.toml"), "train"),
        lock=train_lock,
        fingerprint=train_fp,
    )
    cand = EnvRun(
        EnvironmentSpec("infer", "venv", Path("pylock.toml"), "main"),
        lock=infer_lock,
        fingerprint=infer_fp,
    )
    summary = dataclasses.replace(_summary_of("train"), lock_digest=train_lock.digest)
    bundle = _bundle_of(summary, train_fp, LockView.of(train_lock, "train"))

    def judged(ref: EnvRun) -> list[tuple[str, dict[str, str | None], bool, str]]:
        return [(d.name, d.versions, d.expected, d.note) for d in version_diffs(ref, cand)]

    live, against = judged(live_ref), judged(_bundle_run(bundle, cand))
    assert against == live
    tqdm = next(d for d in live if d[0] == "tqdm")
    assert tqdm[2] is True
    assert tqdm[3].startswith("only in the 'train' group, which infer does not install")
    if cand_numpy != "2.4.6":
        numpy = next(d for d in live if d[0] == "numpy")
        assert numpy[2] is False and numpy[3].startswith("the locks pin different versions")
    assert _old_bundle_note(bundle, cand) is None

    # A bundle from an older parity has no view of its lock: tqdm is reported, not
    # expected, and the check says why once.
    old = dataclasses.replace(bundle, lock=None)
    tqdm_old = next(d for d in judged(_bundle_run(old, cand)) if d[0] == "tqdm")
    assert tqdm_old[2] is False
    note = _old_bundle_note(old, cand)
    assert note is not None and "record the bundle again" in note


def _summary_of(name: str) -> EnvironmentSummary:
    return EnvironmentSummary(
        name=name,
        backend="venv",
        description="venv",
        lock="pylock.toml",
        lock_digest=None,
        group="train",
        python=None,
        platform=None,
        packages={},
        env={},
        libraries={},
        cpu={},
        created=False,
        seconds={},
    )


def _rewrite(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit a bundle folder's bundle.json and write its manifest again."""
    meta = json.loads((bundle / "bundle.json").read_text())
    edit(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    (bundle / "manifest.json").unlink()
    _write_manifest(bundle)


def test_a_bundle_keeps_its_locks_view_and_an_older_one_without_it_loads(
    project: Path, tmp_path: Path
) -> None:
    recorded = json.loads((project / "golden" / "bundle.json").read_text())
    assert recorded["lock"] is None  # the local backend's environment has no lock
    view = LockView.of(_train_lock("sha256:" + "a" * 64), "train")
    bundle = copy_bundle(project, tmp_path)
    _rewrite(bundle, lambda meta: meta.update(lock=view.to_dict()))
    with load_bundle(bundle) as loaded:
        assert loaded.lock == view
        assert loaded.lock.group_of("tqdm") == "train" and loaded.lock.group_of("six") == "main"
        assert loaded.lock.pins == {"six": "1.17.0", "numpy": "2.4.6", "tqdm": "4.67.1"}
    _rewrite(bundle, lambda meta: meta.pop("lock"))  # as parity wrote bundles before
    with load_bundle(bundle) as loaded:
        assert loaded.lock is None
    _rewrite(bundle, lambda meta: meta.update(lock={"path": "p", "group": "g", "pins": [1]}))
    with pytest.raises(BundleError, match=r"lock\.pins must map package names to strings"):
        load_bundle(bundle)
