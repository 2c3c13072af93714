"""Hostile data: what a worker writes, what a bundle holds and what a sample folder holds
is read as untrusted. Each file here is built by the test (declared sizes are crafted in
archive headers, so a "3 GiB" member costs a few bytes), and each is refused with the
right exit code and a message naming the file and the field, never a traceback and never
by writing it first."""

from __future__ import annotations

import functools
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, run_cli, the_failure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envlock.probe
import parity.inputs.samples as samples_module
from envlock.environments import EnvironmentSpec
from parity.bundle import MAX_BUNDLE_BYTES, MAX_MEMBERS, _write_manifest, load_bundle
from parity.config import load_config
from parity.errors import BundleError, ConfigError, HostileOutputError
from parity.inputs.samples import MAX_ARRAYS as MAX_SAMPLE_ARRAYS
from parity.inputs.samples import MAX_INPUT_BYTES as MAX_FOLDER_BYTES
from parity.inputs.samples import MAX_SAMPLE_BYTES, load_samples, sample_folder
from parity.judging.versions import version_diffs
from parity.outputs import (
    FINGERPRINT,
    MAX_ARRAYS,
    MAX_JSON_DEPTH,
    MAX_OUTPUT_BYTES,
    Fields,
    ListOf,
    MapOf,
    Maybe,
    Shape,
    load_fingerprint,
    load_json,
    load_outputs,
    shape_problem,
    worker_seconds,
)
from parity.runs.job import model_failure
from parity.runs.replay import EnvRun, summary

GiB = 1 << 30
DEEP = 100_000


def deep_json(depth: int = DEEP, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + closing * depth


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    result = run_cli("parity", *args, cwd=cwd, timeout=300)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.returncode, result.stderr


# load_json: depth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        deep_json(),
        '{"a": ' * DEEP + "1" + "}" * DEEP,
        '{"ok": 1, "x": ' + deep_json(MAX_JSON_DEPTH) + "}",  # one level over, inside
    ],
    ids=["arrays", "objects", "just-over"],
)
def test_json_nested_too_deep_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fingerprint.json"
    path.write_text(text)
    with pytest.raises(
        HostileOutputError,
        match=f"fingerprint.json: nested more than {MAX_JSON_DEPTH} levels deep$",
    ):
        load_json(path)


def test_brackets_inside_strings_are_not_nesting(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    text = deep_json(DEEP)
    strings = {"s": text, "q": 'a\\"[[[' + "{" * 100, "b": "\\", "c": '\\"' + "[" * 99}
    # 64 deep: the object, then 63 lists; escaped quotes and backslashes end no string early.
    path.write_text(json.dumps(strings)[:-1] + f', "x": {deep_json(MAX_JSON_DEPTH - 1)}}}')
    assert load_json(path)["s"] == text
    path.write_text(json.dumps(strings)[:-1] + f', "x": {deep_json(MAX_JSON_DEPTH)}}}')
    with pytest.raises(HostileOutputError, match="nested more than 64 levels deep"):
        load_json(path)


# The worker's fingerprint, result and error files --------------------------------------------


@functools.cache
def _fingerprint() -> str:
    return json.dumps(envlock.probe.collect())  # this interpreter's, numpy imported


def real_fingerprint() -> dict[str, Any]:
    """This interpreter's fingerprint, as a worker writes one (a fresh copy)."""
    fp: dict[str, Any] = json.loads(_fingerprint())
    return fp


def test_a_real_fingerprint_and_the_nulls_a_probe_writes_are_accepted(tmp_path: Path) -> None:
    fp = real_fingerprint()
    fp["platform"]["libc"] = None
    fp["cpu"]["model"] = None
    fp["distributions"].append({"name": "x", "version": None, "installer": None})
    fp["torch"] = {"version": "2.5.1", "cuda": None, "cudnn": None, "threads": 4, "devices": []}
    fp["numpy"]["simd_found"] = None
    fp["later"] = {"a probe field parity does not read": [1, {"b": None}]}
    path = tmp_path / "fingerprint.json"
    path.write_text(json.dumps(fp))
    assert load_fingerprint(path) == fp


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"distributions": 5}, "distributions must be a list, not an integer"),
        ({"python": []}, "python must be an object, not a list"),
        ({"env": "x"}, "env must be an object, not a string"),
        ({"env": {"OMP_NUM_THREADS": 1}}, "env.OMP_NUM_THREADS must be a string, not an integer"),
        ({"cpu": 3}, "cpu must be an object, not an integer"),
        ({"cpu": {"flags": ["avx", 2]}}, r"cpu.flags\[1\] must be a string, not an integer"),
        ({"numpy": {"version": 1}}, "numpy.version must be a string, not an integer"),
        ({"numpy": {"simd_found": "AVX2"}}, "numpy.simd_found must be a list, not a string"),
        ({"numpy": {"blas": {"name": ["x"]}}}, "numpy.blas.name must be"),
        (
            {"torch": {"devices": [{"capability": 8}]}},
            r"torch.devices\[0\].capability must be a list",
        ),
        ({"platform": {"machine": None}}, "platform.machine must be a string, not null"),
        ({"distributions": [{"version": "1"}]}, r"distributions\[0\].name is missing"),
        (
            {"distributions": [{"name": "a", "requires": "b"}]},
            r"distributions\[0\].requires must be a list",
        ),
        ({"threadpools": [1]}, r"threadpools\[0\] must be an object, not an integer"),
    ],
)
def test_a_wrong_typed_fingerprint_field_refuses_the_file_naming_it(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "infer" / "fingerprint.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**real_fingerprint(), **change}))
    with pytest.raises(HostileOutputError, match=f"infer/fingerprint.json: {problem}"):
        load_fingerprint(path)


def strategy(shape: Shape) -> st.SearchStrategy[Any]:
    """Any JSON value of `shape`: what a fingerprint that passes the check may hold."""
    if isinstance(shape, Maybe):
        return st.none() | strategy(shape.shape)
    if isinstance(shape, ListOf):
        return st.lists(strategy(shape.item), max_size=3)
    if isinstance(shape, MapOf):
        return st.dictionaries(st.text(max_size=8), strategy(shape.value), max_size=3)
    if isinstance(shape, Fields):
        fields = {k: strategy(v) for k, v in shape.fields.items()}
        required = {k: fields.pop(k) for k in shape.required}
        return st.fixed_dictionaries(required, optional=fields)
    kinds = {
        "string": st.text(max_size=8),
        "integer": st.integers(),
        "number": st.floats() | st.integers(),
        "boolean": st.booleans(),
        "null": st.none(),
    }
    return st.one_of(*(kinds[k] for k in sorted(shape)))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(strategy(FINGERPRINT), strategy(FINGERPRINT))
def test_whatever_passes_the_check_is_judged_and_summarized_without_error(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    # The check is the contract downstream code relies on: envlock's diff, the version
    # judgement and the report's summary take any fingerprint it lets through.
    assert shape_problem(a, FINGERPRINT) is None and shape_problem(b, FINGERPRINT) is None
    ref = EnvRun(EnvironmentSpec("train", "local"), fingerprint=a)
    cand = EnvRun(EnvironmentSpec("infer", "local"), fingerprint=b)
    for d in version_diffs(ref, cand):
        assert d.reason()
    for run in (ref, cand):
        assert summary(run).fingerprinted == bool(run.fingerprint)


def test_result_timings_of_the_wrong_type_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text('{"seconds": "fast"}')
    assert worker_seconds(path) == {}
    # An integer too large for a float, infinity, a negative time, a boolean: dropped.
    path.write_text(
        '{"seconds": {"load": 1' + "0" * 400 + ', "predict": Infinity, '
        '"total": -1, "wait_inputs": true, "x": 0.5}}'
    )
    assert worker_seconds(path) == {"x": 0.5}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '{"stage": "predict", "type": "E", "message": {"a": 1}}',
            "message must be a string, not an object",
        ),
        (
            '{"stage": "predict", "type": ["E"], "message": "m"}',
            "type must be a string, not a list",
        ),
        ('{"stage": 3, "type": "E", "message": "m"}', "stage must be a string, not an integer"),
        (
            '{"stage": "predict", "type": "E", "message": "m", "traceback": 5}',
            "traceback must be a string, not an integer",
        ),
        ('{"stage": "predict", "type": "E"}', "message is missing"),
        (deep_json(), f"nested more than {MAX_JSON_DEPTH} levels deep"),
    ],
)
def test_an_unusable_error_file_still_fails_the_environment_naming_the_field(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "error.json"
    path.write_text(text)
    failure = model_failure("infer", path, "in the worker ({stage})")
    assert failure is not None and failure.exit_code == 3
    assert str(failure).startswith("environment 'infer': the model failed, and the worker's")
    assert str(failure).endswith(f"error.json: {problem}")


# The same, end to end: a model that spoils its own worker's files when the worker exits.

SPOILING_ADAPTER = """
import atexit, json, os, sys

def _spoil():
    with open(sys.argv[1]) as f:
        outdir = json.load(f)["outdir"]
    with open(os.environ["SPOIL"]) as f:
        spoil = json.load(f)
    with open(os.path.join(outdir, spoil["file"]), "w") as f:
        f.write(spoil["text"])

if os.environ.get("SPOIL"):
    atexit.register(_spoil)

def predict(inputs):
    if os.environ.get("SPOIL_FAIL"):
        raise ValueError("the model fails")
    return {"y": inputs["x"] * 2.0}
"""


@pytest.mark.parametrize(
    ("file", "text", "fail", "problem"),
    [
        ("fingerprint.json", deep_json(), False, "nested more than 64 levels deep"),
        (
            "fingerprint.json",
            json.dumps({"distributions": 5}),
            False,
            "distributions must be a list, not an integer",
        ),
        ("error.json", deep_json(), True, "nested more than 64 levels deep"),
        ("result.json", deep_json(), False, "nested more than 64 levels deep"),
    ],
    ids=["deep-fingerprint", "distributions", "deep-error", "deep-result"],
)
def test_a_model_spoiling_its_workers_files_is_an_environment_error(
    write_project: Callable[..., Path],
    tmp_path: Path,
    file: str,
    text: str,
    fail: bool,
    problem: str,
) -> None:
    spoil = tmp_path / "spoil.json"
    spoil.write_text(json.dumps({"file": file, "text": text}))
    env = f'SPOIL = "{spoil}"' + ('\nSPOIL_FAIL = "1"' if fail else "")
    cfg = write_project(
        SPOILING_ADAPTER,
        LOCAL_CONFIG.format(timeout=120) + f"\n[environments.infer.env]\n{env}\n",
    )
    work = tmp_path / "work"  # kept as the evidence of a failure: here, not in /tmp
    report = tmp_path / "r.json"
    code, stderr = cli(
        "check", "--config", str(cfg), "-q", "--json", str(report), "--workdir", str(work)
    )
    assert code == 3, stderr
    errors = json.loads(report.read_text())["errors"]
    unusable = "the model failed, and the worker's account is unusable: " if fail else ""
    assert the_failure(errors) == f"environment 'infer': {unusable}{work}/infer/{file}: {problem}"


# Worker outputs ------------------------------------------------------------------------------


def declare_zip_sizes(path: Path, sizes: dict[str, int]) -> None:
    """Make the zip's central directory declare `sizes` (uncompressed) for those members:
    what a reader believes before it reads a byte."""
    data = bytearray(path.read_bytes())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) != -1:
        length = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + length]).decode()
        if name in sizes:
            struct.pack_into("<I", data, pos + 24, sizes[name])
        pos += 46
    path.write_bytes(data)


def test_outputs_with_too_many_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    np.savez(path, **{f"y{i}": np.zeros(1) for i in range(MAX_ARRAYS + 1)})
    with pytest.raises(
        HostileOutputError, match=f"{MAX_ARRAYS + 1} arrays \\(at most {MAX_ARRAYS}\\)"
    ):
        load_outputs(path)


def test_outputs_declaring_more_than_the_limit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    np.savez(path, a=np.zeros(1), b=np.zeros(1), c=np.zeros(1))
    per = (MAX_OUTPUT_BYTES // 3) + 1  # three members just over the limit together (< 4 GiB each)
    declare_zip_sizes(path, {"a.npy": per, "b.npy": per, "c.npy": per})
    with pytest.raises(
        HostileOutputError, match=f"{3 * per} bytes uncompressed, more than the limit"
    ):
        load_outputs(path)


def test_an_array_header_declaring_more_than_its_member_holds_is_refused(tmp_path: Path) -> None:
    # numpy makes room for what a header declares (here 8 TB) before it reads any data.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
    )
    path = tmp_path / "outputs.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("y.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(HostileOutputError, match=r"array 'y' declares 8000000000000 bytes"):
        load_outputs(path)


# Bundles -------------------------------------------------------------------------------------


def bundle_folder(folder: Path, **meta_changes: Any) -> Path:
    """A bundle folder as `parity record` writes one (a consistent manifest), for the
    `local` environment of a config, with `meta_changes` in its bundle.json."""
    folder.mkdir(parents=True)
    fp = real_fingerprint()
    env = {
        "name": "train",
        "backend": "local",
        "description": "this interpreter",
        "lock": None,
        "lock_digest": None,
        "group": None,
        "python": "3.11.7",
        "platform": "Linux-x86_64",
        "packages": {"numpy": "2.0.0"},
        "env": {},
        "libraries": {"numpy": fp["numpy"]},
        "cpu": fp["cpu"],
        "created": False,
        "seconds": {"run": 1.5},
        "fingerprinted": True,
    }
    meta = {
        "schema_version": "1",
        "created": "2026-01-01T00:00:00Z",
        "config": "parity.toml",
        "adapter": "adapter:predict",
        "environment": env,
        "lock": None,
        "inputs": {"seed": 7, "count": 12, "digest": "sha256:" + "0" * 64},
        "tolerance": {},
    }
    for key, value in meta_changes.items():
        if key.startswith("environment_"):
            env[key.removeprefix("environment_")] = value
        else:
            meta[key] = value
    (folder / "bundle.json").write_text(json.dumps(meta))
    (folder / "fingerprint.json").write_text(json.dumps(fp))
    np.savez(folder / "outputs.npz", y=np.zeros((12, 3), np.float32))
    _write_manifest(folder)
    return folder


def remanifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    _write_manifest(folder)


def test_a_consistent_bundle_folder_loads(tmp_path: Path) -> None:
    with load_bundle(bundle_folder(tmp_path / "b")) as bundle:
        assert bundle.environment.cpu == bundle.fingerprint["cpu"]


@pytest.mark.parametrize(
    ("file", "text", "problem"),
    [
        ("bundle.json", deep_json(), "bundle.json: nested more than 64 levels deep"),
        ("bundle.json", "[1]", "bundle.json: expected a JSON object"),
        ("fingerprint.json", deep_json(), "fingerprint.json: nested more than 64 levels deep"),
        (
            "fingerprint.json",
            '{"cpu": 3}',
            "fingerprint.json: cpu must be an object, not an integer",
        ),
        (
            "fingerprint.json",
            '{"numpy": {"version": 1}}',
            "fingerprint.json: numpy.version must be a string, not an integer",
        ),
    ],
)
def test_a_hostile_bundle_file_is_a_bundle_error_naming_it(
    tmp_path: Path, file: str, text: str, problem: str
) -> None:
    folder = bundle_folder(tmp_path / "b")
    (folder / file).write_text(text)
    remanifest(folder)  # consistent: only the content is hostile
    with pytest.raises(BundleError, match=f"b: {problem}$"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"environment_packages": {"numpy": 2}}, "environment.packages.numpy must be a string"),
        ({"environment_env": {"A": []}}, "environment.env.A must be a string, not a list"),
        ({"environment_cpu": {"flags": "avx"}}, "environment.cpu.flags must be a list"),
        (
            {"environment_libraries": {"numpy": {"version": 1}}},
            "environment.libraries.numpy.version must be a string",
        ),
        ({"environment_seconds": {"run": "fast"}}, "environment.seconds.run must be a number"),
    ],
)
def test_a_wrong_typed_bundle_summary_field_is_a_bundle_error(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    folder = bundle_folder(tmp_path / "b", **change)
    with pytest.raises(BundleError, match=f"bundle.json: {problem}"):
        load_bundle(folder)


def test_a_deep_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    folder = bundle_folder(tmp_path / "b")
    (folder / "manifest.json").write_text(deep_json())
    with pytest.raises(BundleError, match=r"manifest\.json: nested more than 64 levels deep$"):
        load_bundle(folder)


def manifest_of(files: dict[str, int]) -> bytes:
    entries = {n: {"sha256": "sha256:" + "0" * 64, "size": s} for n, s in files.items()}
    return json.dumps({"files": entries}).encode()


def tar_archive(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A .tar.gz of `members`: bytes are a file's content; an int is a header declaring
    that many bytes and no data (nothing can follow it)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, int):
                info.size = content
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def zip_archive(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A .zip of `members`: bytes are a file's content; an int is a member of one byte
    whose central directory declares that many."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members:
            zf.writestr(name, content if isinstance(content, bytes) else b"x")
    declare_zip_sizes(path, {n: c for n, c in members if isinstance(c, int)})
    return path


ARCHIVES = {"tar.gz": tar_archive, "zip": zip_archive}
LISTED = {"bundle.json": 3, "fingerprint.json": 3, "outputs.npz": 3}


@pytest.mark.parametrize("kind", ARCHIVES)
@pytest.mark.parametrize(
    ("extra", "content"),
    [("big.bin", 3 * GiB), ("extra.py", b"print('hello')\n" * 100)],
    ids=["declared-3GiB", "small"],
)
def test_a_member_not_in_the_manifest_is_refused_before_anything_is_extracted(
    tmp_path: Path, kind: str, extra: str, content: bytes | int
) -> None:
    members: list[tuple[str, bytes | int]] = [
        ("manifest.json", manifest_of(LISTED)),
        ("bundle.json", b"{}\n"),
        (extra, content),
    ]
    archive = ARCHIVES[kind](tmp_path / f"b.{kind}", members)
    target = tmp_path / "out"
    with pytest.raises(
        BundleError, match=f"member '{extra}' is not in the bundle's manifest; refused$"
    ):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ARCHIVES)
def test_a_member_beside_the_folder_of_the_manifest_is_refused(tmp_path: Path, kind: str) -> None:
    # The manifest of `x/` lists bundle.json: `x/bundle.json`, not the one beside `x/`.
    members: list[tuple[str, bytes | int]] = [
        ("x/manifest.json", manifest_of(LISTED)),
        ("bundle.json", b"{}\n"),
    ]
    archive = ARCHIVES[kind](tmp_path / f"b.{kind}", members)
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=r"member 'bundle\.json' is not in the bundle's manifest"):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ARCHIVES)
def test_a_member_declaring_another_size_than_the_manifest_is_refused_unwritten(
    tmp_path: Path, kind: str
) -> None:
    members: list[tuple[str, bytes | int]] = [
        ("manifest.json", manifest_of(LISTED)),
        ("bundle.json", b"{}\n\n"),  # 4 bytes, the manifest says 3
    ]
    archive = ARCHIVES[kind](tmp_path / f"b.{kind}", members)
    target = tmp_path / "out"
    with pytest.raises(
        BundleError, match=r"member 'bundle\.json' declares 4 bytes, the manifest 3; refused$"
    ):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ARCHIVES)
def test_more_members_than_the_limit_are_refused(tmp_path: Path, kind: str) -> None:
    names = {f"f{i:03d}": 0 for i in range(MAX_MEMBERS + 1)}
    members: list[tuple[str, bytes | int]] = [("manifest.json", manifest_of(names))]
    members += [(n, b"") for n in names]
    archive = ARCHIVES[kind](tmp_path / f"b.{kind}", members)
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=f"more than {MAX_MEMBERS} members; refused$"):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ARCHIVES)
def test_members_declaring_more_than_the_bundle_limit_are_refused(
    tmp_path: Path, kind: str
) -> None:
    # Three members a third of the limit each (each under 4 GiB, as a plain zip header holds).
    per = MAX_BUNDLE_BYTES // 3 + 1
    listed = {"a.bin": per, "b.bin": per, "c.bin": per}
    members: list[tuple[str, bytes | int]] = [("manifest.json", manifest_of(listed))]
    if kind == "zip":
        members += list(listed.items())
    else:  # a tar member's data follows its header: one header declares the whole
        members += [("a.bin", MAX_BUNDLE_BYTES + 1)]
    archive = ARCHIVES[kind](tmp_path / f"b.{kind}", members)
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=f"more than {MAX_BUNDLE_BYTES} bytes uncompressed"):
        load_bundle(archive, extract_to=target)
    assert list(target.iterdir()) == []


def test_check_against_a_hostile_archive_is_a_usage_error(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(SPOILING_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    members: list[tuple[str, bytes | int]] = [
        ("manifest.json", manifest_of(LISTED)),
        ("big.bin", 3 * GiB),
    ]
    archive = tar_archive(tmp_path / "golden.tar.gz", members)
    code, stderr = cli("check", "--config", str(cfg), "--against", str(archive), "-q")
    assert code == 2, stderr
    assert (
        stderr == f"Error: {archive}: member 'big.bin' is not in the bundle's manifest; refused\n"
    )

    folder = bundle_folder(tmp_path / "golden")
    (folder / "bundle.json").write_text(deep_json())
    remanifest(folder)
    code, stderr = cli("check", "--config", str(cfg), "--against", str(folder), "-q")
    assert code == 2, stderr
    assert stderr == f"Error: {folder}: bundle.json: nested more than 64 levels deep\n"


# Sample folders ------------------------------------------------------------------------------

FOLDER_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
folder = "samples"
batch_size = 3

[environments.train]
backend = "local"

[environments.infer]
backend = "local"
"""


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A folder of three good samples."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"{i:03d}.npz", x=np.full((2, 2), i, np.float32))
    return folder


def load_folder(folder: Path) -> dict[str, np.ndarray]:
    return load_samples(sample_folder(folder.parent / "parity.toml", folder.parent, "samples", 3))


def test_good_samples_load(samples: Path) -> None:
    assert load_folder(samples)["x"].shape == (3, 2, 2)


def test_a_sample_with_too_many_arrays_is_a_config_error(
    write_project: Callable[..., Path], samples: Path
) -> None:
    cfg = write_project(SPOILING_ADAPTER, FOLDER_CONFIG)
    np.savez(
        samples / "001.npz",
        **{f"x{i}": np.zeros(1, np.float32) for i in range(MAX_SAMPLE_ARRAYS + 1)},
    )
    code, stderr = cli("check", "--config", str(cfg), "-q")
    assert code == 2
    arrays = MAX_SAMPLE_ARRAYS + 1
    assert stderr == (
        f"Error: {cfg}: inputs.folder: samples/001.npz: {arrays} arrays (at most "
        f"{MAX_SAMPLE_ARRAYS})\n"
    )


def test_a_sample_declaring_more_than_the_limit_is_a_config_error(samples: Path) -> None:
    declare_zip_sizes(samples / "001.npz", {"x.npy": MAX_SAMPLE_BYTES + 1})
    size = MAX_SAMPLE_BYTES + 1
    with pytest.raises(
        ConfigError,
        match=f"samples/001.npz: {size} bytes uncompressed, more than {MAX_SAMPLE_BYTES}$",
    ):
        load_folder(samples)


def test_samples_declaring_more_than_the_folder_limit_are_a_config_error(samples: Path) -> None:
    # Each file declares the most one sample may (1 GiB); nine of them are over 8 GiB.
    for i in range(9):
        np.savez(samples / f"{i:03d}.npz", x=np.full((2, 2), i, np.float32))
        declare_zip_sizes(samples / f"{i:03d}.npz", {"x.npy": MAX_SAMPLE_BYTES})
    with pytest.raises(
        ConfigError, match=f"more than {MAX_FOLDER_BYTES} bytes of samples in samples$"
    ):
        load_folder(samples)


def test_a_sample_whose_header_declares_more_than_it_holds_is_a_config_error(
    samples: Path,
) -> None:
    # numpy would make room for 4 TB before reading: a MemoryError, not a refusal.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
    )
    with zipfile.ZipFile(samples / "001.npz", "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(
        ConfigError,
        match=r"samples/001\.npz: array 'x' declares 4000000000000 bytes \(shape \[1000000, 10",
    ):
        load_folder(samples)


def test_a_sample_member_that_is_not_an_array_is_a_config_error(samples: Path) -> None:
    with zipfile.ZipFile(samples / "001.npz", "w") as zf:
        zf.writestr("x.bin", b"raw bytes")
    with pytest.raises(
        ConfigError, match=r"samples/001\.npz: member 'x\.bin' is not an \.npy array$"
    ):
        load_folder(samples)


def test_a_folder_of_more_samples_than_the_limit_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100,000 real files would only test the file system: the limit is lowered in-process.
    monkeypatch.setattr(samples_module, "MAX_SAMPLES", 3)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"inputs\.folder: more than 3 samples in samples$"):
        sample_folder(tmp_path / "parity.toml", tmp_path, "samples", 3)


# Configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [deep_json(5000), "{a = " * 5000 + "1" + "}" * 5000],
    ids=["arrays", "inline-tables"],
)
def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "parity.toml"
    cfg.write_text(LOCAL_CONFIG.format(timeout=120) + f"\n[policy]\nx = {value}\n")
    code, stderr = cli("check", "--config", str(cfg), "-q")
    assert code == 2
    assert stderr == f"Error: {cfg}: nested more than 32 levels deep; not a parity config\n"


def batch_config(folder: Path, value: str) -> Path:
    (folder / "src").mkdir()
    cfg = folder / "parity.toml"
    cfg.write_text(
        LOCAL_CONFIG.format(timeout=120).replace("batch_size = 5", f"batch_size = {value}")
    )
    return cfg


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1"),
        ("-3", "must be at least 1"),
        ("1e3", "must be an integer, not a number"),
        ("true", "must be an integer, not a boolean"),
        ('"5"', "must be an integer"),
    ],
)
def test_an_odd_batch_size_is_a_config_error(tmp_path: Path, value: str, message: str) -> None:
    cfg = batch_config(tmp_path, value)
    with pytest.raises(ConfigError, match=f"inputs.batch_size: {message}"):
        load_config(cfg)


def test_a_batch_size_beyond_the_count_is_one_batch(tmp_path: Path) -> None:
    # Not an error: the worker takes all 12 inputs at once (a range step past the count).
    cfg = batch_config(tmp_path, str(10**20))
    assert load_config(cfg).inputs.batch_size == 10**20
