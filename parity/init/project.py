"""`parity init`: a project's first parity.toml, lock spec and lock, from what it has.

`init_project` takes the model (an MLflow model URI or folder, or an adapter the user
names, or none: then an adapter skeleton is written to fill in), the dependency sources
(`parity.init.sources`) and the input arrays (from the MLflow signature and input
example, `parity.init.mlflow_model`, or `--input` specs), and writes:

    parity.toml            the check: adapter, seeded inputs, train and infer venvs
    locks/pyproject.toml   the lock spec: `main` and a `train` group
    locks/pylock.toml      the lock `envlock lock` solves from it
    parity_adapter.py      only when no adapter was given (a skeleton)

Everything is written into a temporary folder beside the target first and moved into
place only once the lock is solved and the config reads back, so a failure midway writes
nothing. An existing file is never replaced unless `force` (`ExistingFiles`, exit 2).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from envlock.progress import Progress, quiet
from parity.errors import ConfigError
from parity.init.mlflow_model import ArrayPlan, is_local, read_model
from parity.init.sources import (
    Dependencies,
    InitError,
    python_minor,
    read_environment,
    read_pyproject,
    read_requirements,
)
from parity.jsontext import json_text

CONFIG = "parity.toml"
SPEC = "locks/pyproject.toml"
LOCK = "locks/pylock.toml"
SKELETON = "parity_adapter.py"
SKELETON_ADAPTER = "parity_adapter:predict"
GENERATORS = ("uniform", "normal", "image")
_INPUT = re.compile(
    r"^(?P<name>[A-Za-z_][\w-]*)=(?P<dtype>[a-z0-9]+)\[(?P<shape>[\d,\sx]*)\](?::(?P<rest>.+))?$"
)
_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
# Sibling files taken as a requirements file's training-only part.
TRAIN_REQUIREMENTS = ("requirements-train.txt", "requirements_train.txt", "train-requirements.txt")


class ExistingFiles(InitError):
    """Files `parity init` would write are there already (and `force` was not given)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        names = ", ".join(str(p) for p in paths)
        super().__init__(None, None, f"{names} already exist(s); --force replaces them")


@dataclass
class InitResult:
    """What `parity init` wrote and decided."""

    folder: str
    written: list[str]
    adapter: str
    arrays: list[dict[str, Any]]
    groups: dict[str, list[str]]
    sources: list[str]
    notes: list[str] = field(default_factory=list)
    locked: bool = True

    @property
    def exit_code(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "written": self.written,
            "adapter": self.adapter,
            "arrays": self.arrays,
            "groups": self.groups,
            "sources": self.sources,
            "notes": self.notes,
            "locked": self.locked,
        }

    def to_json(self) -> str:
        return json_text(self.to_dict())


def parse_input(text: str) -> ArrayPlan:
    """An `--input` spec: `NAME=DTYPE[SHAPE]`, then optionally `:LOW..HIGH` and/or
    `:GENERATOR` (uniform, normal, image). `x=float32[4]`, `lr=uint8[48,48]:image`,
    `k=int64[]:0..9` (a scalar per sample)."""
    match = _INPUT.match(text.strip())
    if match is None:
        raise InitError(
            None,
            "--input",
            f"{text!r} is not NAME=DTYPE[SHAPE][:LOW..HIGH][:GENERATOR], "
            "e.g. x=float32[3,4] or lr=uint8[48,48]:image",
        )
    dtype = match.group("dtype")
    if dtype not in _DTYPES:
        raise InitError(None, "--input", f"{text!r}: dtype must be one of {', '.join(_DTYPES)}")
    raw = [d for d in re.split(r"[,\sx]+", match.group("shape").strip()) if d]
    shape = tuple(int(d) for d in raw)
    if any(d <= 0 for d in shape):
        raise InitError(None, "--input", f"{text!r}: axis lengths must be positive")
    low = high = None
    generator = "uniform"
    for part in (match.group("rest") or "").split(":"):
        part = part.strip()
        if not part:
            continue
        if part in GENERATORS:
            generator = part
            continue
        lo, sep, hi = part.partition("..")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            sep = ""
        if not sep or low is None or high is None or low >= high:
            raise InitError(
                None,
                "--input",
                f"{text!r}: {part!r} is neither LOW..HIGH (LOW < HIGH) nor "
                f"a generator ({', '.join(GENERATORS)})",
            )
    return ArrayPlan(match.group("name"), shape, dtype, low, high, generator, note="--input")


def detect_sources(folder: Path) -> dict[str, Path]:
    """The dependency files a project folder holds, by kind (what `parity init` offers
    when it asks on a terminal)."""
    found: dict[str, Path] = {}
    for kind, names in (
        ("requirements", ("requirements.txt",)),
        ("pyproject", ("pyproject.toml",)),
        ("environment", ("environment.yml", "environment.yaml")),
    ):
        for name in names:
            if (folder / name).is_file():
                found[kind] = folder / name
                break
    return found


def init_project(
    folder: Path,
    *,
    mlflow_model: str | None = None,
    requirements: list[Path] | None = None,
    train_requirements: list[Path] | None = None,
    pyproject: Path | None = None,
    environment: Path | None = None,
    train: list[str] | None = None,
    train_groups: list[str] | None = None,
    drop: list[str] | None = None,
    adapter: str | None = None,
    paths: list[str] | None = None,
    inputs: list[str] | None = None,
    count: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    tracking_uri: str | None = None,
    exclude_newer: str | None = None,
    force: bool = False,
    lock: bool = True,
    progress: Progress | None = None,
) -> InitResult:
    """Write a parity project into `folder` (see the module's docstring); the result says
    what was written and decided. A `ConfigError` (exit 2) for bad input, an existing file
    without `force`, or what cannot be expressed; nothing is written then."""
    say = progress or quiet
    folder = folder.resolve()
    requirements = list(requirements or [])
    train_requirements = list(train_requirements or [])
    if sum(bool(s) for s in (requirements, pyproject, environment)) > 1:
        raise InitError(
            None, None, "give one dependency source: --requirements, --pyproject or --environment"
        )
    if tracking_uri and re.match(r"^[a-z0-9+.-]+://[^/@\s]*:[^/@\s]*@", tracking_uri):
        raise InitError(
            None,
            "--tracking-uri",
            "a URI with a password would be written into parity.toml; give the credentials "
            "in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD and name them in "
            "[run] pass_env instead",
        )
    if mlflow_model and adapter:
        raise InitError(None, "--adapter", "an MLflow model is its own adapter (mlflow:<uri>)")
    if exclude_newer is not None:
        exclude_newer = _exclude_newer(exclude_newer)
    notes: list[str] = []
    model = None
    model_uri = None
    if mlflow_model:
        local = Path(mlflow_model).expanduser() if is_local(mlflow_model) else None
        say(f"reading the MLflow model {mlflow_model} (MLmodel, input example, requirements)")
        model = read_model(
            mlflow_model, folder=local.resolve() if local else None, tracking_uri=tracking_uri
        )
        notes += model.notes
        model_uri = _model_uri(mlflow_model, local, folder)

    deps = _dependencies(
        model.dependencies if model else None,
        requirements,
        train_requirements,
        pyproject,
        environment,
        train_groups,
        drop or [],
    )
    deps.move_to_train(list(train or []))
    notes += deps.notes
    if model is not None:
        pin = f"mlflow=={model.mlflow_version}" if model.mlflow_version else "mlflow"
        _need(deps, "mlflow", pin, notes, "loads the model in each environment")
    _need(deps, "numpy", "numpy", notes, "parity's worker needs it")
    if not deps.train and not (train or train_requirements):
        notes.append(
            "all packages are in main (train adds nothing): nothing told training-only ones "
            "apart; move some with --train NAME or --train-requirements FILE"
        )

    if inputs:
        arrays = [parse_input(i) for i in inputs]
    elif model is not None:
        arrays = model.arrays
    else:
        raise InitError(
            None,
            "--input",
            "the input arrays are unknown: give --input NAME=DTYPE[SHAPE] "
            "(e.g. --input x=float32[3,4]), or --mlflow-model with a signature",
        )
    names = [a.name for a in arrays]
    if len(set(names)) != len(names):
        raise InitError(None, "--input", f"an input array is named twice: {names}")

    write_skeleton = model is None and adapter is None
    adapter_spec = f"mlflow:{model_uri}" if model_uri else (adapter or SKELETON_ADAPTER)
    if write_skeleton:
        notes.append(
            f"{SKELETON} is a skeleton: fill in predict() before `parity check` (no --adapter "
            "was given)"
        )
    env_vars, pass_env = _tracking(mlflow_model, tracking_uri, notes)

    files = [CONFIG, SPEC] + ([LOCK] if lock else []) + ([SKELETON] if write_skeleton else [])
    existing = [folder / f for f in files if (folder / f).exists()]
    if existing and not force:
        raise ExistingFiles(existing)

    spec_text = _spec_text(folder.name, deps, exclude_newer)
    config_text = _config_text(
        adapter_spec,
        paths if paths is not None else ([] if model_uri else ["."]),
        arrays,
        count=count,
        batch_size=batch_size,
        seed=seed,
        env=env_vars,
        pass_env=pass_env,
    )
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        groups = _write(folder, files, spec_text, config_text, arrays, write_skeleton, lock, say)
    except BaseException:
        for made_folder in made:  # folders made for nothing are taken back, deepest first
            with contextlib.suppress(OSError):
                made_folder.rmdir()
        raise
    if not lock:
        notes.append(f"not locked: run `envlock lock --spec {SPEC}` before `parity check`")
    say(f"wrote {', '.join(files)} in {folder}")
    return InitResult(
        folder=str(folder),
        written=files,
        adapter=adapter_spec,
        arrays=[_array_dict(a) for a in arrays],
        groups=groups or {"main": list(deps.main), "train": list(deps.train)},
        sources=deps.sources,
        notes=notes,
        locked=lock,
    )


def _write(
    folder: Path,
    files: list[str],
    spec_text: str,
    config_text: str,
    arrays: list[ArrayPlan],
    write_skeleton: bool,
    lock: bool,
    say: Progress,
) -> dict[str, list[str]] | None:
    """Write `files` into a temporary folder in `folder`, lock the spec there, read the
    config back, then move each into place: nothing is left in `folder` on a failure.
    The lock's packages per group, if locked."""
    groups = None
    with tempfile.TemporaryDirectory(prefix=".parity-init-", dir=folder) as tmp:
        staging = Path(tmp)
        (staging / "locks").mkdir()
        (staging / SPEC).write_text(spec_text, encoding="utf-8")
        (staging / CONFIG).write_text(config_text, encoding="utf-8")
        if write_skeleton:
            (staging / SKELETON).write_text(_skeleton(arrays), encoding="utf-8")
        if lock:
            from envlock.locking import lock as envlock_lock

            say(f"locking {SPEC} with envlock (main, train)")
            locked = envlock_lock(staging / SPEC, progress=say)
            groups = locked.groups
        _validate(staging / CONFIG, lock)
        for name in files:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
    return groups


def _model_uri(given: str, local: Path | None, folder: Path) -> str:
    """The URI parity.toml names: a local folder relative to parity.toml when it was given
    relative (parity.toml's relative paths are relative to it), else as given."""
    if local is None or local.is_absolute():
        return given
    return os.path.relpath(local.resolve(), folder)


def _dependencies(
    model: Dependencies | None,
    requirements: list[Path],
    train_requirements: list[Path],
    pyproject: Path | None,
    environment: Path | None,
    train_groups: list[str] | None,
    drop: list[str],
) -> Dependencies:
    deps = Dependencies()
    if requirements:
        for path in requirements:
            read_requirements(path, deps, "main")
        if not train_requirements:
            sibling = next(
                (
                    requirements[0].parent / n
                    for n in TRAIN_REQUIREMENTS
                    if (requirements[0].parent / n).is_file()
                ),
                None,
            )
            if sibling is not None:
                train_requirements = [sibling]
                deps.notes.append(
                    f"{sibling.name} found beside {requirements[0].name}: its packages go to train"
                )
    elif pyproject is not None:
        read_pyproject(pyproject, deps, train_groups)
    elif environment is not None:
        read_environment(environment, deps, drop)
    elif model is not None:
        deps = model
    else:
        raise InitError(
            None,
            None,
            "no dependency source: give --requirements, --pyproject, --environment "
            "or --mlflow-model",
        )
    if model is not None and deps is not model:
        deps.notes.append("the model's own requirements were replaced by the source given")
        deps.requires_python = deps.requires_python or model.requires_python
    for path in train_requirements:
        read_requirements(path, deps, "train")
    if drop:
        deps.drop(drop)
    return deps


def _need(deps: Dependencies, name: str, requirement: str, notes: list[str], why: str) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    held = {canonicalize_name(Requirement(r).name) for r in deps.main}
    if name not in held and not (name == "mlflow" and "mlflow-skinny" in held):
        deps.main.append(requirement)
        notes.append(f"{requirement} added to main: {why}")


def _tracking(
    mlflow_model: str | None, tracking_uri: str | None, notes: list[str]
) -> tuple[dict[str, str], list[str]]:
    """How the workers reach the tracking store a `runs:/` or `models:/` URI needs."""
    if not mlflow_model or not mlflow_model.startswith(("runs:", "models:")):
        return {}, []
    if tracking_uri:
        notes.append("the workers reach the tracking store through [run.env] MLFLOW_TRACKING_URI")
        return {"MLFLOW_TRACKING_URI": tracking_uri}, []
    notes.append(
        "the workers get MLFLOW_TRACKING_URI from parity's environment ([run] pass_env): "
        "set it when you run `parity check`"
    )
    return {}, ["MLFLOW_TRACKING_URI"]


def _exclude_newer(value: str) -> str:
    """`value` as uv's exclude-newer takes it (an RFC 3339 timestamp with its offset, or a
    date), normalized to UTC with a Z; an `InitError` naming the option otherwise."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.date.fromisoformat(text).isoformat()
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in text.upper():
        raise InitError(
            None,
            "--exclude-newer",
            f"{value!r} is not a date (2026-11-01) or a timestamp with its offset "
            "(2026-11-01T00:00:00Z)",
        )
    return when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _spec_text(project: str, deps: Dependencies, exclude_newer: str | None = None) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", project).strip("-._") or "project"
    uv: dict[str, Any] = {"package": False}
    uv.update(deps.uv)
    uv.setdefault(
        "environments",
        [f"sys_platform == '{sys.platform}' and platform_machine == '{platform.machine()}'"],
    )
    if exclude_newer is not None:  # the user's, over a source's own
        uv["exclude-newer"] = exclude_newer
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    uv.setdefault("exclude-newer", now.isoformat().replace("+00:00", "Z"))
    doc = {
        "project": {
            "name": f"{name}-env",
            "version": "0",
            "requires-python": deps.requires_python or python_minor(),
            "dependencies": deps.main,
        },
        "dependency-groups": {"train": deps.train},
        "tool": {"uv": uv},
    }
    header = (
        "# The lock spec `parity init` wrote. `envlock lock --spec locks/pyproject.toml` solves\n"
        "# every group at once into pylock.toml beside it: `main` ([project].dependencies) is\n"
        "# what inference installs, `train` adds what only training needs. Edit this file,\n"
        "# never pylock.toml. [tool.uv] exclude-newer: solving again gives the same lock.\n"
    )
    return header + tomli_w.dumps(doc)


def _config_text(
    adapter: str,
    paths: list[str],
    arrays: list[ArrayPlan],
    *,
    count: int,
    batch_size: int,
    seed: int,
    env: dict[str, str],
    pass_env: list[str],
) -> str:
    q = _quote
    lines = [
        "# Written by `parity init`: does the model give the same answers in its training and",
        "# its inference environment, both built from the one lock in locks/?",
        "# Run it with `parity check --config parity.toml`.",
        "",
        "[model]",
        f"adapter = {q(adapter)}",
    ]
    if paths:
        lines.append(f"paths = [{', '.join(q(p) for p in paths)}]  # relative to this file")
    lines += ["", "[inputs]", f"seed = {seed}", f"count = {count}", f"batch_size = {batch_size}"]
    for a in arrays:
        lines += ["", f"[inputs.arrays.{a.name}]" + (f"  # {a.note}" if a.note else "")]
        lines.append(f"shape = [{', '.join(str(d) for d in a.shape)}]")
        lines.append(f"dtype = {q(a.dtype)}")
        if a.generator != "uniform":
            lines.append(f"generator = {q(a.generator)}")
        if a.low is not None and a.high is not None:
            lines.append(f"low = {_number(a.low)}")
            lines.append(f"high = {_number(a.high)}")
    for name, group in (("train", "train"), ("infer", "main")):
        lines += [
            "",
            f"[environments.{name}]",
            'backend = "venv"',
            f"lock = {q(LOCK)}",
            f"group = {q(group)}" + ("  # main + train" if group == "train" else ""),
        ]
    lines += [
        "",
        "[run]",
        'reference = "train"  # outputs are compared against this environment',
        "threads = 1          # BLAS/OpenMP threads in both: thread counts change sums",
        "timeout = 600",
    ]
    if pass_env:
        lines.append(f"pass_env = [{', '.join(q(v) for v in pass_env)}]")
    if env:
        lines += ["", "[run.env]"] + [f"{k} = {q(v)}" for k, v in env.items()]
    lines += [
        "",
        "# |infer - train| <= atol + rtol * |train|, element by element: both environments",
        "# share one lock, so their answers should agree to the last bits; loosen per output",
        "# with [tolerance.outputs.NAME] where a training-only package changes numerics.",
        "[tolerance]",
        "atol = 1e-6",
        "rtol = 1e-6",
        "",
        "[policy]",
        'fail_on_version_diffs = ["numerics"]',
        "",
    ]
    return "\n".join(lines)


def _quote(value: str) -> str:
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(float(x))


def _validate(config: Path, locked: bool) -> None:
    """The config must read back as parity reads it (with its lock, if one was made)."""
    if not locked:
        return
    from parity.config import load_config

    try:
        load_config(config)
    except ConfigError as e:
        raise InitError(None, None, f"parity init wrote a config that does not read: {e}") from None


def _array_dict(a: ArrayPlan) -> dict[str, Any]:
    return {
        "name": a.name,
        "shape": list(a.shape),
        "dtype": a.dtype,
        "low": a.low,
        "high": a.high,
        "generator": a.generator,
        "note": a.note,
    }


def _skeleton(arrays: list[ArrayPlan]) -> str:
    shapes = ", ".join(f"{a.name}: {a.dtype} {['N', *a.shape]}" for a in arrays)
    return f'''"""The adapter parity runs in each environment (a skeleton `parity init` wrote).

parity imports this module inside the training and the inference environment and calls
`predict` with a batch of the seeded inputs parity.toml declares ({shapes}),
each a NumPy array with a leading batch axis. Return a dict of named NumPy arrays (the
outputs compared), each with the same leading batch axis. Load the model once, not per
batch, and from files, never from anything pickled by another environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_model: Any = None


def load_model() -> Any:
    """Load the model once (from this folder: parity.toml's [model] paths)."""
    global _model
    if _model is None:
        raise NotImplementedError("parity_adapter.load_model: load your model here")
    return _model


def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs for one batch of inputs."""
    model = load_model()
    return {{"output": np.asarray(model(batch))}}
'''
