"""Read `parity.toml`: the model adapter, the input set, the environments and the tolerances.

Every mistake is reported as `ConfigError` naming the file and the key, e.g.
`parity.toml: environments.infer.lock: file not found: locks/nope.toml`.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envlock import LockFileError, read_lock
from envlock.backends.endpoint import BINARY_MODES, PROTOCOLS
from envlock.environments import BACKENDS, EnvironmentSpec
from envlock.envvars import LEAKY_ENV, declare_secrets
from parity.errors import ConfigError
from parity.inputs.samples import SampleFolder, sample_folder
from parity.inputs.seeded import GENERATORS, LAYOUTS, ArraySpec, InputSpec
from parity.policies import POLICIES, TolerancePolicy, all_settings
from parity.policies.base import SettingError

# The settings some backends read: image, gpus, memory, pids (docker); url, model, ...
# (endpoint).
_ALL_OPTIONS = tuple(dict.fromkeys(o for b in BACKENDS.values() for o in b.options))
_OPTION_WORDS = {"memory": "a size such as '4g'"}
SEVERITIES = ("numerics", "runtime", "benign", "other")
_ADAPTER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
# A warning's class: `sklearn.exceptions.InconsistentVersionWarning`, `UserWarning`.
_CATEGORY = re.compile(r"^[A-Za-z_][\w.]*$")
LOG_PREFIX = "log:"
# Warnings that say the model was saved under another version of the library loading it:
# its state may be read wrongly whatever the outputs on the inputs replayed show.
DEFAULT_FAIL_ON_WARNINGS = ("sklearn.exceptions.InconsistentVersionWarning",)
# The most bytes a generated input set may hold (count x the bytes of one sample's arrays):
# beyond it the inputs would exhaust memory or disk before a model ran. `inputs.max_bytes`
# raises (or lowers) it for one config.
MAX_INPUT_BYTES = 16 * 2**30
_DTYPE_BYTES = {
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "float32": 4,
    "float64": 8,
}


@dataclass(frozen=True)
class WarningRule:
    """One entry of `[policy] fail_on_warnings`: a warning class (matched by the caught
    warning's class or any warning class it derives from) or, for `log:<logger>`, log
    records of that logger or its children; with `: text` after it, only those whose
    message contains `text`."""

    entry: str  # as the config writes it
    category: str  # a class's full name, or `log:<logger>`
    text: str = ""

    @property
    def is_log(self) -> bool:
        """Whether this rule matches log records rather than Python warnings."""
        return self.category.startswith(LOG_PREFIX)


def warning_rule(entry: str) -> WarningRule:
    """`entry` as a rule; raise ValueError saying what is wrong with it."""
    if entry.startswith(LOG_PREFIX):
        logger, sep, text = entry.removeprefix(LOG_PREFIX).partition(":")
        if not logger.strip() or logger != logger.strip():
            raise ValueError(f"must name a logger after 'log:' (e.g. 'log:mlflow'), got {entry!r}")
        category = LOG_PREFIX + logger
    else:
        category, sep, text = entry.partition(":")
        category = category.strip()
        if not _CATEGORY.match(category):
            raise ValueError(
                "must be a warning class's full name (e.g. "
                f"'sklearn.exceptions.InconsistentVersionWarning') or 'log:<logger>', "
                f"optionally followed by ': <text of the message>', got {entry!r}"
            )
    text = text.strip()
    if sep and not text:
        raise ValueError(f"nothing after ':' in {entry!r} (the text the message must contain)")
    return WarningRule(entry, category, text)


@dataclass(frozen=True)
class ParityConfig:
    """A validated parity config; relative paths are resolved against the file's folder."""

    path: Path
    adapter: str
    model_paths: tuple[Path, ...]
    inputs: InputSpec | SampleFolder
    environments: tuple[EnvironmentSpec, ...]
    # With `load_config(..., against=True)` the reference may name no environment here
    # (the bundle's recording stands in for it; "" when the config names none at all).
    reference: str
    tolerance: TolerancePolicy
    output_tolerances: dict[str, TolerancePolicy] = field(default_factory=dict)
    fail_on_version_diffs: tuple[str, ...] = ("numerics",)
    # warnings caught in an environment that fail the check (`[policy] fail_on_warnings`)
    fail_on_warnings: tuple[WarningRule, ...] = tuple(
        WarningRule(c, c) for c in DEFAULT_FAIL_ON_WARNINGS
    )
    timeout: float = 900.0
    threads: int | None = 1
    env: dict[str, str] = field(default_factory=dict)
    # names of parity's own environment variables both workers get as they are (`run.pass_env`)
    pass_env: tuple[str, ...] = ()
    calibrate: bool = False
    stages: str | None = None  # module:function giving the adapter's stages (localization)
    localize: bool = False  # after a failing check, find the first stage that diverges
    # With `against=True`: environments left out because their lock is gone or unusable,
    # by name, with the error that a plain check gives (only the reference's may be).
    set_aside: dict[str, str] = field(default_factory=dict)
    # where the replay runs: "local" (this machine) or "ray" (shards on a Ray cluster,
    # `parity.runs.sharded`), with `[run.ray]`'s settings
    executor: str = "local"
    ray: RaySettings = field(default_factory=lambda: RaySettings())

    @property
    def worker_adapter(self) -> str:
        """The adapter as a worker gets it: an `mlflow:` model given as a relative folder
        path is relative to this config's folder (as [model] paths are), not to wherever
        parity runs; a URI (runs:/, models:/, s3://...) or an absolute path is as written."""
        uri = self.adapter.removeprefix("mlflow:")
        if uri == self.adapter or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
            return self.adapter
        if Path(uri).expanduser().is_absolute():
            return self.adapter
        return "mlflow:" + str(self.path.resolve().parent / uri)

    def tolerance_for(self, output: str) -> TolerancePolicy:
        """The tolerance policy of one output: its own, else the default."""
        return self.output_tolerances.get(output, self.tolerance)

    def environment(self, name: str) -> EnvironmentSpec:
        """The environment called `name`."""
        return next(e for e in self.environments if e.name == name)


EXECUTORS = ("local", "ray")
MERGES = ("partial", "outputs")  # `[run.ray] merge`


@dataclass(frozen=True)
class RaySettings:
    """`[run.ray]`: how a check with `run.executor = "ray"` uses the cluster. None means
    the default, decided when the check runs (`parity.runs.sharded`): the address from
    `$RAY_ADDRESS`, two shards per CPU of the cluster (at most one per batch), a shard
    timeout of twice `run.timeout`."""

    address: str | None = None
    shards: int | None = None
    shard_timeout: float | None = None
    max_retries: int = 3
    # hard: every shard needs these custom resources (runs only on nodes that have them)
    resources: dict[str, float] = field(default_factory=dict)
    # soft: shards go to the nodes with this custom resource while one is alive, else anywhere
    prefer: str | None = None
    # what the shards send back: "partial" (their comparisons, merged exactly; the outputs
    # stay on the nodes) or "outputs" (the outputs themselves, judged here)
    merge: str = "partial"
    # how many differences a shard's quantile sketch keeps before binning them (None:
    # $PARITY_SHARD_KEEP_LIMIT, else the comparison's default)
    keep_limit: int | None = None


class _Table:
    """A TOML table plus where it is, so every error can name its key."""

    def __init__(self, path: Path, prefix: str, data: Any) -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(path, prefix or None, f"must be a table, not {_kind(data)}")
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), message)

    def table(self, name: str, required: bool = True) -> _Table:
        if name not in self.data:
            if required:
                raise self.fail(name, "missing (required table)")
            return _Table(self.path, self.key(name), {})
        return _Table(self.path, self.key(name), self.data[name])

    def get(
        self, name: str, kind: type | tuple[type, ...], default: Any = ..., *, what: str = ""
    ) -> Any:
        if name not in self.data:
            if default is ...:
                raise self.fail(name, "missing (required)")
            return default
        value = self.data[name]
        # bool is an int in Python; a config that says `count = true` is a mistake.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise self.fail(name, f"must be {what or _names(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(name, f"must be {what or _names(kind)}, not {_kind(value)}")
        return value

    def reject_unknown(self, known: set[str]) -> None:
        for name in self.data:
            if name not in known:
                hint = ", ".join(sorted(known))
                raise self.fail(name, f"unknown key (expected one of: {hint})")


MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_DEPTH = 32  # a parity config nests 5 deep ([tolerance.outputs.y] and a list)


def _depth(data: Any) -> int:
    """How deep tables and arrays nest in parsed TOML (iteratively: any depth is safe)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_CONFIG_DEPTH:
            break
        items = value.values() if isinstance(value, dict) else value
        todo.extend((v, depth + 1) for v in items if isinstance(v, dict | list))
    return deepest


def load_config(path: str | Path, *, against: bool = False) -> ParityConfig:
    """Read and validate a parity config; raise `ConfigError` naming the file and key.

    With `against` (a check against a golden bundle, whose recording is the reference)
    the reference environment is not needed: the config may declare only the environment
    to check, `run.reference` may name an environment it lacks, and the reference's lock
    may be gone or unusable (it is then left out, in `set_aside`). Everything else is
    validated as for a plain check."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        data = None
    if data is None or _depth(data) > MAX_CONFIG_DEPTH:
        raise ConfigError(
            path, None, f"nested more than {MAX_CONFIG_DEPTH} levels deep; not a parity config"
        )
    base = path.resolve().parent
    root = _Table(path, "", data)
    root.reject_unknown({"model", "inputs", "environments", "run", "tolerance", "policy"})

    model = root.table("model")
    model.reject_unknown({"adapter", "paths", "stages"})
    adapter = model.get("adapter", str, what="'module:function'")
    if adapter.startswith("mlflow:"):
        if len(adapter) == len("mlflow:"):
            raise model.fail(
                "adapter", "'mlflow:' needs a model URI, e.g. 'mlflow:models:/espcn/3'"
            )
    elif not _ADAPTER.match(adapter):
        raise model.fail(
            "adapter",
            f"must look like 'package.module:function' or 'mlflow:<model URI>', got {adapter!r}",
        )
    stages = model.get("stages", str, None, what="'module:function'")
    if stages is not None and not _ADAPTER.match(stages):
        raise model.fail(
            "stages",
            f"must look like 'package.module:function' (a function giving the adapter's "
            f"stages), got {stages!r}",
        )
    raw_paths = model.get("paths", list, ["."], what="a list of folders")
    model_paths = []
    for i, p in enumerate(raw_paths):
        if not isinstance(p, str):
            raise model.fail(f"paths[{i}]", f"must be a string, not {_kind(p)}")
        folder = (base / p).resolve()
        if not folder.is_dir():
            raise model.fail(f"paths[{i}]", f"folder not found: {p}")
        model_paths.append(folder)

    inputs = _read_inputs(root.table("inputs"), base)
    run_data = data.get("run")
    named = run_data.get("reference") if isinstance(run_data, dict) else None
    environments, unusable = _read_environments(
        root.table("environments"), base, against, named if isinstance(named, str) else None
    )

    run = root.table("run", required=False)
    run.reject_unknown(
        {
            "reference",
            "timeout",
            "threads",
            "env",
            "pass_env",
            "calibrate",
            "localize",
            "executor",
            "ray",
        }
    )
    names = list(root.table("environments").data)  # as declared, usable or not
    reference = run.get("reference", str, names[0] if len(names) == 2 else "")
    if reference not in names and not against:
        raise run.fail("reference", f"no environment {reference!r} (have: {', '.join(names)})")
    for name, error in unusable.items():
        if name != reference:  # only the reference is replaced by the bundle
            raise error
    set_aside = {name: f"{error.key}: {error.detail}" for name, error in unusable.items()}
    environments = [e for e in environments if e.name not in unusable]
    timeout = float(run.get("timeout", (int, float), 900, what="a number of seconds"))
    if not math.isfinite(timeout) or timeout <= 0:
        raise run.fail("timeout", f"must be a positive, finite number of seconds, got {timeout}")
    threads = run.get("threads", int, 1, what="an integer (0: leave thread counts alone)")
    if threads < 0:
        raise run.fail("threads", "must be 0 or more")
    calibrate = run.get("calibrate", bool, False, what="true or false")
    localize = run.get("localize", bool, False, what="true or false")
    env = _env_vars(run.table("env", required=False))
    pass_env = _pass_env(run)
    executor = run.get("executor", str, "local", what=f"one of {', '.join(EXECUTORS)}")
    if executor not in EXECUTORS:
        raise run.fail("executor", f"must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    ray = _ray_settings(run.table("ray", required=False))

    tolerance, per_output = _read_tolerances(root.table("tolerance", required=False))

    policy = root.table("policy", required=False)
    policy.reject_unknown({"fail_on_version_diffs", "fail_on_warnings"})
    fail_on = policy.get("fail_on_version_diffs", list, ["numerics"], what="a list of severities")
    for i, s in enumerate(fail_on):
        if s not in SEVERITIES:
            raise policy.fail(
                f"fail_on_version_diffs[{i}]", f"must be one of {SEVERITIES}, got {s!r}"
            )
    warn_on = policy.get(
        "fail_on_warnings",
        list,
        list(DEFAULT_FAIL_ON_WARNINGS),
        what="a list of warning classes (or 'log:<logger>' entries)",
    )
    rules = []
    for i, entry in enumerate(warn_on):
        if not isinstance(entry, str):
            raise policy.fail(f"fail_on_warnings[{i}]", f"must be a string, not {_kind(entry)}")
        try:
            rules.append(warning_rule(entry))
        except ValueError as e:
            raise policy.fail(f"fail_on_warnings[{i}]", str(e)) from None

    return ParityConfig(
        path=path,
        adapter=adapter,
        model_paths=tuple(model_paths),
        inputs=inputs,
        environments=tuple(environments),
        reference=reference,
        tolerance=tolerance,
        output_tolerances=per_output,
        fail_on_version_diffs=tuple(fail_on),
        fail_on_warnings=tuple(rules),
        timeout=timeout,
        threads=threads or None,
        env=env,
        pass_env=pass_env,
        calibrate=calibrate,
        stages=stages,
        localize=localize,
        set_aside=set_aside,
        executor=executor,
        ray=ray,
    )


_RESOURCE = re.compile(r"^[A-Za-z_][\w.-]*$")
_RAY_ADDRESS = re.compile(r"^[^\s]+$")


def _ray_settings(t: _Table) -> RaySettings:
    """`[run.ray]`; its defaults are decided when the check runs (see `RaySettings`)."""
    t.reject_unknown(
        {
            "address",
            "shards",
            "shard_timeout",
            "max_retries",
            "resources",
            "prefer",
            "merge",
            "keep_limit",
        }
    )
    address = t.get(
        "address", str, None, what="a Ray cluster's address, e.g. 'ray-head.example.internal:6379'"
    )
    if address is not None and not _RAY_ADDRESS.match(address):
        raise t.fail("address", f"must be an address without spaces, got {address!r}")
    shards = t.get("shards", int, None, what="an integer (how many shards)")
    if shards is not None and shards < 1:
        raise t.fail("shards", f"must be at least 1, got {shards}")
    timeout = t.get("shard_timeout", (int, float), None, what="a number of seconds")
    if timeout is not None:
        timeout = float(timeout)
        if not math.isfinite(timeout) or timeout <= 0:
            raise t.fail(
                "shard_timeout", f"must be a positive, finite number of seconds, got {timeout}"
            )
    retries = t.get("max_retries", int, 3, what="an integer (0: never retry)")
    if retries < 0:
        raise t.fail("max_retries", f"must be 0 or more, got {retries}")
    resources_t = t.table("resources", required=False)
    resources = {}
    for name in resources_t.data:
        if not _RESOURCE.match(name) or name in ("CPU", "GPU", "memory"):
            raise resources_t.fail(repr(name), "must be the name of a custom Ray resource")
        amount = float(resources_t.get(name, (int, float), what="a positive number"))
        if not math.isfinite(amount) or amount <= 0:
            raise resources_t.fail(name, f"must be a positive number, got {amount}")
        resources[name] = amount
    prefer = t.get("prefer", str, None, what="the name of a custom Ray resource")
    if prefer is not None and not _RESOURCE.match(prefer):
        raise t.fail("prefer", f"must be the name of a custom Ray resource, got {prefer!r}")
    merge = t.get("merge", str, "partial", what='"partial" or "outputs"')
    if merge not in MERGES:
        raise t.fail("merge", f"must be one of {', '.join(MERGES)}, got {merge!r}")
    keep_limit = t.get("keep_limit", int, None, what="an integer (values a shard keeps)")
    if keep_limit is not None and keep_limit < 0:
        raise t.fail("keep_limit", f"must be 0 or more, got {keep_limit}")
    return RaySettings(address, shards, timeout, retries, resources, prefer, merge, keep_limit)


def _env_vars(t: _Table) -> dict[str, str]:
    """An `env` table: names and values an environment's process can be given."""
    env = {}
    for k in t.data:
        value = t.get(k, str, what="a string")
        if not k or "=" in k or "\0" in k:
            raise t.fail(repr(k), "an environment variable's name must be non-empty, without '='")
        if "\0" in value:
            raise t.fail(k, "an environment variable's value cannot hold a NUL character")
        env[k] = value
    declare_secrets(env)  # a token set here for the model is never shown either
    return env


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _pass_env(run: _Table) -> tuple[str, ...]:
    """`run.pass_env`: names of parity's environment variables that workers get as they are
    (the only way a secret-looking one reaches them); never one that would show a worker
    this interpreter's packages."""
    names = run.get("pass_env", list, [], what="a list of environment variable names")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise run.fail(f"pass_env[{i}]", f"must be a string, not {_kind(name)}")
        if not _VARIABLE_NAME.fullmatch(name):
            raise run.fail(
                f"pass_env[{i}]",
                f"{name!r} is not an environment variable name (letters, digits and '_', "
                "not starting with a digit)",
            )
        if name in LEAKY_ENV:
            raise run.fail(
                f"pass_env[{i}]",
                f"{name} would show the workers this interpreter's packages, not their "
                "environment's",
            )
    return tuple(dict.fromkeys(names))


def _read_inputs(t: _Table, base: Path) -> InputSpec | SampleFolder:
    t.reject_unknown({"seed", "count", "batch_size", "arrays", "folder", "max_bytes"})
    batch = t.get("batch_size", int, 64)
    if batch <= 0:
        raise t.fail("batch_size", "must be at least 1")
    if "folder" in t.data:
        for key in ("seed", "count", "arrays"):
            if key in t.data:
                raise t.fail(
                    key,
                    "cannot be combined with inputs.folder (the folder's samples are the "
                    "input set)",
                )
        folder = t.get("folder", str, what="a path to a folder of .npz samples")
        if "max_bytes" in t.data:
            raise t.fail("max_bytes", "only applies to generated inputs (not inputs.folder)")
        return sample_folder(t.path, base, folder, batch)
    seed = t.get("seed", int)
    if seed < 0:
        raise t.fail("seed", "must be 0 or more")
    count = t.get("count", int)
    if count <= 0:
        raise t.fail("count", "must be at least 1")
    arrays_t = t.table("arrays")
    if not arrays_t.data:
        raise ConfigError(
            t.path, arrays_t.prefix, "needs at least one input array, e.g. [inputs.arrays.x]"
        )
    max_bytes = t.get("max_bytes", int, MAX_INPUT_BYTES, what="an integer number of bytes")
    if max_bytes <= 0:
        raise t.fail("max_bytes", "must be at least 1")
    arrays = []
    sample_bytes = 0
    for name in arrays_t.data:
        if not _NAME.match(name):
            raise arrays_t.fail(name, "array names must be identifiers")
        a = arrays_t.table(name)
        a.reject_unknown({"shape", "dtype", "generator", "layout", "low", "high", "mean", "std"})
        shape = a.get("shape", list, what="a list of positive integers")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise a.fail("shape", f"must be a list of positive integers, got {shape!r}")
        dtype = a.get("dtype", str, "float32")
        if dtype not in _DTYPE_BYTES:
            raise a.fail("dtype", f"unsupported dtype {dtype!r}")
        generator = a.get("generator", str, "uniform")
        if generator not in GENERATORS:
            raise a.fail("generator", f"must be one of {', '.join(GENERATORS)}, got {generator!r}")
        params: dict[str, float] = {}
        for p in ("low", "high", "mean", "std"):
            if p in a.data:
                params[p] = float(a.get(p, (int, float), what="a number"))
                if not math.isfinite(params[p]):
                    raise a.fail(p, f"must be a finite number, got {params[p]}")
        if "low" in params and "high" in params and params["low"] >= params["high"]:
            raise a.fail("high", "must be greater than low")
        if params.get("std", 1.0) <= 0:
            raise a.fail("std", "must be positive")
        _check_reach(a, dtype, generator, params)
        layout = a.get("layout", str, None, what=f"one of {', '.join(LAYOUTS)}")
        if layout is not None:
            if layout not in LAYOUTS:
                raise a.fail("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
            if generator != "image":
                raise a.fail(
                    "layout",
                    f'only applies to generator = "image" (this is {generator!r}): the '
                    f"other generators draw every value alone",
                )
            if len(shape) < 3:
                raise a.fail(
                    "layout",
                    f"needs a shape with a channel axis and two spatial axes (at least 3 "
                    f"axes), got {shape!r}: a 2-axis image is one plane",
                )
        arrays.append(ArraySpec(name, tuple(shape), dtype, generator, params, layout))
        sample_bytes += math.prod(shape) * _DTYPE_BYTES[dtype]
    if count * sample_bytes > max_bytes:
        raise t.fail(
            "count",
            f"{count} samples of {_size(sample_bytes)} each make {_size(count * sample_bytes)} "
            f"of inputs, over the limit of {_size(max_bytes)} (inputs.max_bytes = {max_bytes}): "
            f"lower inputs.count or the arrays' shapes, or raise inputs.max_bytes",
        )
    return InputSpec(seed=seed, count=count, batch_size=batch, arrays=tuple(arrays))


def _read_environments(
    t: _Table, base: Path, against: bool = False, reference: str | None = None
) -> tuple[list[EnvironmentSpec], dict[str, ConfigError]]:
    """The environments, and (with `against`) the errors of those whose lock is missing
    or unusable, by name: those are still in the list, for the caller to drop when it is
    the reference (`reference`: what `run.reference` names, if anything, for messages)."""
    if against and len(t.data) not in (1, 2):
        raise ConfigError(
            t.path,
            "environments",
            f"needs one or two environments (with --against, the one to check and "
            f"optionally the one the bundle recorded), found {len(t.data)}",
        )
    if not against and len(t.data) == 1:
        (only,) = t.data
        if reference is not None and reference != only:
            raise ConfigError(
                t.path,
                "environments",
                f"no environment {reference!r} (run.reference names it; have: {only}): a "
                f"check needs two environments; to check {only} against a bundle recorded "
                f"in {reference}, pass --against BUNDLE",
            )
        raise ConfigError(
            t.path,
            "environments",
            f"needs exactly two environments (training and inference), found 1 ({only}); "
            f"to check it against a bundle recorded in the other, pass --against BUNDLE",
        )
    if not against and len(t.data) != 2:
        raise ConfigError(
            t.path,
            "environments",
            f"needs exactly two environments (training and inference), found {len(t.data)}",
        )
    envs = []
    unusable: dict[str, ConfigError] = {}
    for name in t.data:
        if not _NAME.match(name):
            raise t.fail(name, "environment names must be identifiers")
        e = t.table(name)
        e.reject_unknown({"backend", "lock", "group", "python", "env", *_ALL_OPTIONS})
        backend = e.get("backend", str, "venv")
        if backend not in BACKENDS:
            raise e.fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
        kind = BACKENDS[backend]
        lock = None
        group = e.get("group", str, "main")
        if kind.needs_lock(e.data.keys()):
            lock_s = e.get("lock", str, what="a path to a pylock.toml")
            lock = (base / lock_s).resolve()
            try:
                _check_lock(e, lock, lock_s, group)
            except ConfigError as err:
                if not against:
                    raise
                unusable[name] = err
        python = e.get("python", str, None)
        env_t = e.table("env", required=False)
        extra: dict[str, Any] = {"env": _env_vars(env_t)}
        for key, kind_of in kind.options.items():
            default = getattr(EnvironmentSpec, key, None)  # None: a field with a factory
            extra[key] = e.get(key, kind_of, default, what=_OPTION_WORDS.get(key, ""))
        for key in _ALL_OPTIONS:
            if key in e.data and key not in kind.options:
                owner = next(b for b, k in BACKENDS.items() if key in k.options)
                raise e.fail(key, f'only applies to backend = "{owner}"')
        if backend == "endpoint":
            _endpoint_settings(e, base, extra)
        envs.append(EnvironmentSpec(name, backend, lock, group, python, **extra))
    return envs, unusable


_URL = re.compile(r"^https?://[^\s/@]+(/[^\s]*)?$")
_MODEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_RETRIES = 20
_OUTPUT_DTYPES = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                  "int64", "float16", "float32", "float64")  # fmt: skip


def _endpoint_settings(e: _Table, base: Path, extra: dict[str, Any]) -> None:
    """Check and complete, in `extra`, the settings of an environment with
    `backend = "endpoint"`; raise `ConfigError` naming the key."""
    for key in ("python", "env"):
        if key in e.data:
            raise e.fail(key, 'does not apply to backend = "endpoint" (a running server)')
    url = e.get("url", str, what="the server's address, e.g. 'http://127.0.0.1:8080'")
    if not _URL.match(url):
        raise e.fail(
            "url",
            f"must be an http:// or https:// address without credentials (authorization "
            f"goes in headers, read from environment variables), got {url!r}",
        )
    extra["url"] = url.rstrip("/")
    extra["model"] = e.get("model", str, what="the model's name on the server")
    for key in ("model", "model_version"):
        if extra[key] is not None and not _MODEL.match(extra[key]):
            raise e.fail(key, f"must be letters, digits, '_', '.' or '-', got {extra[key]!r}")
    if extra["protocol"] not in PROTOCOLS:
        raise e.fail(
            "protocol", f"must be one of {', '.join(PROTOCOLS)}, got {extra['protocol']!r}"
        )
    if extra["binary"] not in BINARY_MODES:
        raise e.fail("binary", f"must be one of {', '.join(BINARY_MODES)}, got {extra['binary']!r}")
    bentoml = extra["protocol"] == "bentoml"
    if bentoml and extra["binary"] == "binary":
        raise e.fail("binary", 'BentoML\'s HTTP API carries JSON only (binary = "json")')
    if bentoml and extra["model_version"] is not None:
        raise e.fail("model_version", 'only applies to protocol = "oip"')
    outputs_t = e.table("outputs", required=False)
    if outputs_t.data and not bentoml:
        raise e.fail("outputs", 'only applies to protocol = "bentoml" (OIP answers say dtypes)')
    if bentoml and not outputs_t.data:
        raise e.fail(
            "outputs",
            "missing: BentoML's answers do not say their dtypes; name each output's, e.g. "
            f'outputs = {{ y = "float32" }} (one of {", ".join(_OUTPUT_DTYPES)})',
        )
    outputs = {}
    for name in outputs_t.data:
        dtype = outputs_t.get(name, str, what="a dtype name")
        if dtype not in _OUTPUT_DTYPES:
            raise outputs_t.fail(name, f"must be one of {', '.join(_OUTPUT_DTYPES)}, got {dtype!r}")
        outputs[name] = dtype
    extra["outputs"] = outputs
    headers_t = e.table("headers", required=False)
    headers = {}
    for name in headers_t.data:
        variable = headers_t.get(name, str, what="the name of an environment variable")
        if not _HEADER.match(name):
            raise headers_t.fail(repr(name), "is not an HTTP header name")
        if not _VARIABLE_NAME.fullmatch(variable):
            raise headers_t.fail(
                name,
                f"must name the environment variable that holds the header's value (its "
                f"value is never written in the config), got {variable!r}",
            )
        headers[name] = variable
    extra["headers"] = headers
    for key in ("ready_timeout", "request_timeout"):
        extra[key] = float(extra[key])
        if not math.isfinite(extra[key]) or extra[key] <= 0:
            raise e.fail(key, f"must be a positive, finite number of seconds, got {extra[key]}")
    if not 0 <= extra["retries"] <= MAX_RETRIES:
        raise e.fail("retries", f"must be from 0 to {MAX_RETRIES}, got {extra['retries']}")
    for key in ("ca_bundle", "fingerprint"):
        if extra[key] is not None:
            found = (base / extra[key]).resolve()
            if not found.is_file():
                raise e.fail(key, f"file not found: {extra[key]}")
            extra[key] = found
    serving = extra["serving"] or []
    for i, package in enumerate(serving):
        if not isinstance(package, str) or not _MODEL.match(package):
            raise e.fail(f"serving[{i}]", f"must be a package's name, got {package!r}")
    extra["serving"] = tuple(serving)
    if extra["ca_bundle"] is not None and not extra["verify"]:
        raise e.fail("ca_bundle", "given with verify = false: certificates are not checked")


def _check_lock(e: _Table, lock: Path, lock_s: str, group: str) -> None:
    """Raise `ConfigError` unless `lock` is a readable lock with `group`."""
    if not lock.is_file():
        raise e.fail("lock", f"file not found: {lock_s}")
    try:
        groups = read_lock(lock).groups
    except LockFileError as err:
        raise e.fail("lock", f"unusable lock: {err}") from None
    if group not in groups:
        raise e.fail("group", f"no group {group!r} in {lock_s} (it has: {', '.join(groups)})")


def _read_tolerances(t: _Table) -> tuple[TolerancePolicy, dict[str, TolerancePolicy]]:
    default = _policy(t, TolerancePolicy(), extra=frozenset({"outputs"}))
    outputs_t = t.table("outputs", required=False)
    per_output = {}
    for name in outputs_t.data:
        per_output[name] = _policy(outputs_t.table(name), default)
    return default, per_output


def _policy(
    t: _Table, default: TolerancePolicy, extra: frozenset[str] = frozenset()
) -> TolerancePolicy:
    """A policy table: `policy` names the policy, the other keys are its settings.

    A table without `policy` keeps the default's policy; settings it does not write are
    inherited from the default table."""
    known = all_settings()
    names = ", ".join(POLICIES)
    t.reject_unknown({"policy", *known, *extra})
    kind = t.get("policy", str, default.kind, what=f"one of {names}")
    if kind not in POLICIES:
        raise t.fail("policy", f"must be one of {names}, got {kind!r}")
    specs = POLICIES[kind].setting_specs()
    own = {s.name for s in specs}
    for key in t.data:
        if key in known and key not in own:
            owner = next(
                p for p in POLICIES.values() if any(s.name == key for s in p.setting_specs())
            )
            raise t.fail(key, f"only applies to policy = {owner.name!r} (this is {kind!r})")
    values: dict[str, Any] = {}
    # Numbers before integers: of two wrong settings, the one always reported first.
    for spec in sorted(specs, key=lambda s: s.integer):
        if spec.name in t.data:
            try:
                values[spec.name] = spec.check(t.get(spec.name, spec.types, what=spec.what))
            except SettingError as e:
                raise t.fail(spec.name, str(e)) from None
    return replace(default, kind=kind, **values)


# The largest finite value of each float dtype, and how far normal draws reach (Box-Muller
# on 53-bit uniforms reaches 8.57 standard deviations from the mean).
_FLOAT_MAX = {"float16": 65504.0, "float32": 3.4028234663852886e38, "float64": sys.float_info.max}
_NORMAL_REACH = 9.0


def _check_reach(a: _Table, dtype: str, generator: str, params: dict[str, float]) -> None:
    """Raise `ConfigError` when a float array's values could overflow its dtype (to
    infinity, or NaN where the range itself overflows): inputs that are all inf or NaN
    would make any check pass vacuously."""
    top = _FLOAT_MAX.get(dtype)
    if top is None:  # integers are clipped to the dtype's range
        return
    if generator == "normal":
        mean, std = params.get("mean", 0.0), params.get("std", 1.0)
        key, lo, hi = "std", mean - _NORMAL_REACH * std, mean + _NORMAL_REACH * std
        how = f"mean ± {_NORMAL_REACH:g} std"
    else:
        lo, hi = params.get("low", 0.0), params.get("high", 1.0)
        key, how = ("low" if abs(lo) > abs(hi) else "high"), "low to high"
    if not math.isfinite(hi - lo) or max(abs(lo), abs(hi)) > top:
        raise a.fail(
            key,
            f"the values drawn ({how}) would overflow {dtype}, whose largest is {top:.6g}: "
            f"keep them, and their range, within ±{top:.6g}",
        )


def _size(n: int) -> str:
    """`n` bytes for a message: `16 GiB`, `1.5 MiB`, `12 bytes`."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return " or ".join(words.get(k, k.__name__) for k in _as_tuple(kind))


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
