"""`parity fleet`: many configs (models) checked as one job, on a local pool or on Ray.

Each config is checked in isolation: a `parity check --config X --json R` process of its
own, so that one config that crashes, hangs or cannot even be read never takes the others
down. Locally a bounded pool of threads runs them (`jobs`, default: the CPU count); on Ray
each is one task (`num_cpus=1`, retried when its node or worker dies, never when the check
itself fails) that runs the same process on its node and returns the JSON report as text.
The report is read back by parity's JSON reader (`parity.outputs.parse_json`: bounded size
and depth) and its fields checked before any is used; nothing is ever unpickled.

A config's row is its check's verdict, or `error` with the reason when the check could
not be made (a config that does not load, an environment that fails, a timeout, a Ray task
lost). The fleet's exit code: 3 if any config could not be checked, else 1 if any failed,
else 0 (`FleetReport.exit_code`). See docs/ARCHITECTURE.md and the README's "Checking a
fleet of models".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from envlock.backends.base import RUNNING, Stopped, _dies_with_parent, kill_group
from envlock.errors import EnvlockError
from envlock.progress import Progress, quiet
from parity.errors import HostileOutputError, ParityError
from parity.jsontext import json_safe, json_text
from parity.outputs import (
    MAX_JSON_BYTES,
    SCALAR,
    TEXT,
    Fields,
    ListOf,
    MapOf,
    parse_json,
    shape_problem,
)

__all__ = ["FleetEntry", "FleetError", "FleetReport", "expand_configs", "run_fleet"]

SCHEMA_VERSION = "1"
# The JSON Schema of `FleetReport.to_dict()`; each row's embedded report follows
# report.schema.json beside it.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "fleet.schema.json"
Executor = Literal["local", "ray"]
Verdict = Literal["pass", "fail", "error"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
# Seconds a config's check gets beyond its own run.timeout (per replay): building its
# environments, starting workers, judging, writing the report.
MARGIN_S = 600.0
# Seconds a check that timed out or is stopped gets between SIGTERM and SIGKILL: parity
# unwinds in 2 s (`envlock.clikit.UNWIND_SECONDS`), killing its workers and cleaning up.
GRACE_S = 5.0
STDERR_KEPT = 20_000  # characters of a check's stderr a row keeps (its log has them all)
RAY_TASK_RETRIES = 3  # reruns of a config's task when its node or worker dies
# The fields of a check's JSON report the fleet reads, type-checked before any is used
# (the whole report is embedded as it is: report.schema.json describes it).
REPORT = Fields(
    {
        "schema_version": TEXT,
        "verdict": TEXT,
        "config": TEXT,
        "reasons": ListOf(TEXT),
        "errors": ListOf(TEXT),
        "seconds": MapOf(SCALAR),
        "outputs": ListOf(Fields({"name": TEXT, "max_abs_diff": SCALAR})),
    },
    required=("verdict", "reasons", "errors"),
)
_EXIT = {"pass": 0, "fail": 1, "error": 3}
# How a check's process is started: the interpreter running parity, so that a Ray node
# needs no `parity` script on its PATH, only parity importable (as for the task itself);
# with -P, so that a module in the config's folder (its working directory) never shadows
# one of parity's.
_MAIN = "from parity.cli import main; main(prog_name='parity')"


class FleetError(ParityError):
    """The fleet as a whole cannot run (no configs, a bad executor, Ray missing or out of
    reach); a config that fails is a row of the report instead."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class FleetEntry:
    """One config's row: its check's verdict, or `error` and why it could not be checked."""

    config: str  # the config's path, as given (or as a folder or fleet file listed it)
    name: str  # what the table calls it: the config's folder, or its file's stem
    verdict: Verdict
    exit_code: int  # the check's exit code (2: the config did not load; 3: environment)
    reasons: list[str]  # the check's errors, then its reasons; why it could not be checked
    seconds: float
    where: str  # "local", or the Ray node that ran it ("ray node2 (1a2b3c4d)")
    node_id: str | None = None  # the Ray node's id
    max_abs_diff: float | None = None  # the largest over the outputs that report one
    report: dict[str, Any] | None = None  # the check's whole JSON report, when it wrote one
    report_path: str | None = None  # where it was kept (`reports_dir`)
    log_path: str | None = None  # the check's stderr, kept beside it
    stderr: str = ""  # the end of the check's stderr (errors, a kept work folder)

    @property
    def reason(self) -> str:
        """The key reason: the first line of the first error or reason ("" for a pass
        without any)."""
        return (self.reasons[0].strip().splitlines() or [""])[0] if self.reasons else ""


@dataclass(frozen=True)
class FleetReport:
    """Every config's row, in the order given, and the fleet's verdict."""

    verdict: Verdict
    executor: str
    address: str | None
    entries: list[FleetEntry]
    seconds: float
    jobs: int | None = None  # the local pool's size
    schema_version: str = SCHEMA_VERSION

    @property
    def exit_code(self) -> int:
        """3 if any config could not be checked, else 1 if any failed, else 0."""
        return _EXIT[self.verdict]

    @property
    def counts(self) -> dict[str, int]:
        """How many configs passed, failed, could not be checked."""
        counts = dict.fromkeys(("pass", "fail", "error"), 0)
        for e in self.entries:
            counts[e.verdict] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract (parity/schema/fleet.schema.json)."""
        configs = []
        for e in self.entries:
            row = asdict(e)
            row["reason"] = e.reason
            for key in ("node_id", "report", "report_path", "log_path", "max_abs_diff"):
                if row[key] is None:  # absent, not null
                    del row[key]
            configs.append(row)
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "command": "fleet",
            "verdict": self.verdict,
            "executor": self.executor,
            "counts": self.counts,
            "configs": configs,
            "seconds": self.seconds,
        }
        if self.address is not None:
            data["address"] = self.address
        if self.jobs is not None:
            data["jobs"] = self.jobs
        safe: dict[str, Any] = json_safe(data)
        return safe

    def to_json(self) -> str:
        return json_text(self.to_dict())


@dataclass(frozen=True)
class _Planned:
    """A config that loaded: what its check process is given."""

    index: int
    config: str  # as given
    path: str  # absolute
    name: str
    timeout: float


# Listing the configs ---------------------------------------------------------------------


def expand_configs(items: Sequence[str | Path]) -> list[Path]:
    """The configs `items` name: a config file as it is (one that does not exist is kept,
    to be reported as a row that could not be checked); a folder, every `parity.toml` under
    it; a fleet file (a TOML file with a `[fleet]` table), the configs its `configs` list
    names, relative to it. Each config once, in the order given. FleetError (exit 2) when
    nothing is named, a folder holds no `parity.toml`, or a fleet file is malformed."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            under = sorted(p for p in path.rglob("parity.toml") if p.is_file())
            if not under:
                raise FleetError(f"{path}: a folder with no parity.toml under it", 2)
            found += under
        elif (listed := _fleet_file(path)) is not None:
            found += listed
        else:
            found.append(path)
    if not found:
        raise FleetError("no configs to check: name parity configs, folders or a fleet file", 2)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _fleet_file(path: Path) -> list[Path] | None:
    """The configs a fleet file lists, or None when `path` is not a fleet file."""
    if path.suffix != ".toml" or not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # a config that will not load: its row says why
    fleet = data.get("fleet")
    if fleet is None:
        return None
    configs = fleet.get("configs") if isinstance(fleet, dict) else None
    if (
        not isinstance(configs, list)
        or not configs
        or not all(isinstance(c, str) and c for c in configs)
    ):
        raise FleetError(f"{path}: fleet.configs must be a non-empty list of config paths", 2)
    return [path.parent / c for c in configs]


def _name(path: Path) -> str:
    """A config's name in the table: its folder's for a `parity.toml`, else its stem."""
    resolved = path.resolve()
    return resolved.parent.name if resolved.name == "parity.toml" else resolved.stem


# Running the fleet -------------------------------------------------------------------


def run_fleet(
    configs: Sequence[str | Path],
    *,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    cache_dir: Path | None = None,
    reports_dir: Path | None = None,
    margin: float = MARGIN_S,
    progress: Progress | None = None,
) -> FleetReport:
    """Check every config of `configs` (files, folders or fleet files, `expand_configs`)
    as a `parity check` process of its own, `jobs` at a time on this machine
    (`executor="local"`) or as one Ray task each on the cluster at `address` (else
    `$RAY_ADDRESS`; `executor="ray"`, the `ray` extra). A config's check gets its
    `run.timeout` per replay plus `margin` seconds, then is killed. With `reports_dir`,
    each config's JSON report and stderr are kept there (`NN-name.json`, `NN-name.log`).

    FleetError: no configs or a bad executor (exit 2), Ray missing (2) or out of reach
    (3). Everything that goes wrong with one config is its row (verdict `error`)."""
    say = progress or quiet
    if executor not in EXECUTORS:
        raise FleetError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}", 2)
    if jobs is not None and jobs < 1:
        raise FleetError(f"jobs must be at least 1, got {jobs}", 2)
    if executor == "ray":
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not address:
            raise FleetError(
                "--executor ray needs the cluster's address: --address HOST:PORT or RAY_ADDRESS",
                2,
            )
    paths = expand_configs(configs)
    ray = _connect_ray(address) if executor == "ray" and address else None
    try:
        return _run(paths, executor, jobs, address, ray, cache_dir, reports_dir, margin, say)
    finally:
        if ray is not None:
            ray.shutdown()


def _run(
    paths: list[Path],
    executor: str,
    jobs: int | None,
    address: str | None,
    ray: Any,
    cache_dir: Path | None,
    reports_dir: Path | None,
    margin: float,
    say: Progress,
) -> FleetReport:
    start = time.monotonic()
    rows: dict[int, FleetEntry] = {}
    unloaded: dict[int, FleetEntry] = {}
    planned: list[_Planned] = []
    for index, path in enumerate(paths):
        plan = _plan(index, path, margin)
        if isinstance(plan, FleetEntry):
            unloaded[index] = plan
        else:
            planned.append(plan)
    total = len(paths)

    def finished(index: int, entry: FleetEntry) -> None:
        if reports_dir is not None:
            entry = _keep(entry, index, reports_dir)
        rows[index] = entry
        where = "" if entry.where == "local" else f" on {entry.where}"
        why = f": {entry.reason}" if entry.verdict != "pass" and entry.reason else ""
        say(
            f"[{len(rows)}/{total}] {entry.config}: {entry.verdict} "
            f"({entry.seconds:.1f} s{where}){why}"
        )

    pool_size = None
    if executor == "local":
        pool_size = jobs or os.cpu_count() or 1
        say(f"checking {total} configs, {pool_size} at a time")
    for index, entry in unloaded.items():  # the configs that did not load are done already
        finished(index, entry)
    if executor == "local":
        assert pool_size is not None
        _run_local(planned, pool_size, cache_dir, finished)
    else:
        assert address is not None
        _run_ray(ray, planned, address, cache_dir, say, finished)
    entries = [rows[i] for i in range(total)]
    verdict: Verdict = (
        "error"
        if any(e.verdict == "error" for e in entries)
        else "fail"
        if any(e.verdict == "fail" for e in entries)
        else "pass"
    )
    return FleetReport(
        verdict=verdict,
        executor=executor,
        address=address if executor == "ray" else None,
        entries=entries,
        seconds=round(time.monotonic() - start, 3),
        jobs=pool_size,
    )


def _plan(index: int, path: Path, margin: float) -> _Planned | FleetEntry:
    """What a config's check is given, or its row when the config does not load."""
    from parity.config import load_config

    start = time.monotonic()
    try:
        config = load_config(path)
    except (ParityError, EnvlockError) as e:
        return FleetEntry(
            config=str(path),
            name=_name(path),
            verdict="error",
            exit_code=getattr(e, "exit_code", 3),
            reasons=[str(e)],
            seconds=round(time.monotonic() - start, 3),
            where="local",
        )
    replays = (2 if config.calibrate else 1) + (1 if config.localize else 0)
    return _Planned(
        index=index,
        config=str(path),
        path=str(path.resolve()),
        name=_name(path),
        timeout=config.timeout * replays + margin,
    )


def _keep(entry: FleetEntry, index: int, folder: Path) -> FleetEntry:
    """`entry` with its report and stderr written into `folder`."""
    from dataclasses import replace

    stem = f"{index + 1:02d}-{_safe(entry.name)}"
    report_path = log_path = None
    if entry.report is not None:
        report_path = folder / f"{stem}.json"
        _write(report_path, json_text(entry.report))
    if entry.stderr:
        log_path = folder / f"{stem}.log"
        _write(log_path, entry.stderr)
    return replace(
        entry,
        report_path=None if report_path is None else str(report_path),
        log_path=None if log_path is None else str(log_path),
    )


def _write(path: Path, text: str) -> None:
    """Write `text` whole (a temporary file renamed over `path`), secrets redacted."""
    from envlock.envvars import redactor

    text = redactor().redact(text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ParityError(f"could not write {path}: {e.strerror or e}") from None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "config"


def _run_local(
    planned: list[_Planned],
    jobs: int,
    cache_dir: Path | None,
    finished: Callable[[int, FleetEntry], None],
) -> None:
    """Each config's check in a process of its own, `jobs` at a time."""
    if not planned:
        return
    cache = None if cache_dir is None else str(cache_dir)
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=min(jobs, len(planned)), thread_name_prefix="parity-fleet"
    ) as pool:
        futures = {pool.submit(check_in_process, p.path, p.timeout, cache): p for p in planned}
        try:
            for future in concurrent.futures.as_completed(futures):
                p = futures[future]
                finished(p.index, _entry(p, future.result(), "local"))
        except BaseException:  # interrupted: the configs not started yet never start
            for future in futures:
                future.cancel()
            raise


def check_in_process(config: str, timeout: float, cache_dir: str | None) -> dict[str, Any]:
    """Run `parity check --config CONFIG --json ...` in a process of its own (its own
    process group, dying with the thread that started it), killed after `timeout`
    seconds; what it did, as plain data: exit code (None when killed), whether it timed
    out, its JSON report's text (None when it wrote none), the end of its stderr, seconds.
    The body of a Ray task too: arguments and result are plain text and numbers."""
    if RUNNING.stopping:  # the fleet is being interrupted: start nothing more
        raise Stopped(f"{config}: not checked (stopped)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="parity-fleet-") as tmp:
        report = Path(tmp) / "report.json"
        log = Path(tmp) / "stderr.log"
        cmd = [sys.executable, "-P", "-c", _MAIN, "check", "--config", config]
        cmd += ["--json", str(report), "-q"]
        if cache_dir is not None:
            cmd += ["--cache-dir", cache_dir]
        timed_out = False
        with log.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=Path(config).parent if Path(config).parent.is_dir() else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a group of its own: signalled whole
                preexec_fn=_dies_with_parent(),
            )
            try:
                with RUNNING.running(lambda: _terminate(proc.pid)):
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        _terminate(proc.pid)
                    if timed_out or RUNNING.stopping:
                        try:
                            proc.wait(GRACE_S)
                        except subprocess.TimeoutExpired:
                            kill_group(proc.pid)
            finally:
                if proc.poll() is None:
                    kill_group(proc.pid)
                proc.wait()
        text = None
        too_large = False
        if report.is_file() and not report.is_symlink():
            with report.open("rb") as f:
                raw = f.read(MAX_JSON_BYTES + 1)
            too_large = len(raw) > MAX_JSON_BYTES
            text = None if too_large else raw.decode("utf-8", errors="replace")
        stderr = log.read_bytes()[-4 * STDERR_KEPT :].decode("utf-8", errors="replace")
    return {
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "timeout": timeout,
        "report": text,
        "report_too_large": too_large,
        "stderr": stderr[-STDERR_KEPT:],
        "seconds": round(time.monotonic() - start, 3),
    }


def _terminate(pid: int) -> None:
    """SIGTERM to a check's process group: parity stops its workers and unwinds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)


def _entry(p: _Planned, result: dict[str, Any], where: str, node: str | None = None) -> FleetEntry:
    """A config's row from what its check process did."""
    code = result.get("exit_code")
    stderr = str(result.get("stderr") or "")
    base: dict[str, Any] = dict(
        config=p.config,
        name=p.name,
        seconds=float(result.get("seconds") or 0.0),
        where=where,
        node_id=node,
        stderr=stderr,
    )
    last = _last_error(stderr)
    if result.get("timed_out"):
        reason = f"parity check timed out after {p.timeout:g} s and was killed"
        return FleetEntry(verdict="error", exit_code=3, reasons=[reason], **base)
    if result.get("report_too_large"):
        reason = f"{p.config}: its JSON report is larger than {MAX_JSON_BYTES} bytes"
        return FleetEntry(verdict="error", exit_code=3, reasons=[reason], **base)
    text = result.get("report")
    if text is not None and code in (0, 1, 3):
        try:
            data = parse_json(str(text).encode("utf-8"), f"{p.config}: its JSON report")
            problem = shape_problem(data, REPORT, f"{p.config}: its JSON report")
            if problem is not None:
                raise HostileOutputError(problem)
            if data["verdict"] not in _EXIT:
                raise HostileOutputError(
                    f"{p.config}: its JSON report has verdict {data['verdict']!r}"
                )
        except HostileOutputError as e:
            return FleetEntry(verdict="error", exit_code=3, reasons=[str(e)], **base)
        verdict: Verdict = data["verdict"]
        reasons = [*data["errors"], *data["reasons"]]
        if _EXIT[verdict] != code:  # written, then something failed (another report file)
            reasons.insert(0, last or f"parity check exited {code} after its report said {verdict}")
            verdict = "error"
        return FleetEntry(
            verdict=verdict,
            exit_code=int(code),
            reasons=reasons,
            max_abs_diff=_max_abs_diff(data),
            report=data,
            **base,
        )
    if code is not None and code < 0:
        why = f"parity check was killed by signal {signal.Signals(-code).name}"
    elif code in (2, 3) and last:
        why = last
    else:
        why = f"parity check exited {code} without a report" + (f": {last}" if last else "")
    return FleetEntry(
        verdict="error",
        exit_code=3 if code is None or code < 0 else int(code),
        reasons=[why],
        **base,
    )


def _last_error(stderr: str) -> str:
    """The line a failed check ended with (its one-line error), without click's
    `Error: ` prefix; not a kept work folder's line."""
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if line and "work folder kept" not in line:
            return line.removeprefix("Error: ")
    return ""


def _max_abs_diff(report: dict[str, Any]) -> float | None:
    """The largest finite or infinite max |diff| of the report's outputs (None if none)."""
    values = []
    for o in report.get("outputs") or []:
        v = o.get("max_abs_diff")
        if isinstance(v, str) and v in ("inf", "-inf", "nan"):
            v = float(v)
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v):
            values.append(float(v))
    return max(values) if values else None


# Ray -----------------------------------------------------------------------------------


def _ray_check(config: str, timeout: float, cache_dir: str | None) -> dict[str, Any]:
    """A config's Ray task: `check_in_process` on the node it was scheduled on, and that
    node's id."""
    import ray

    result = check_in_process(config, timeout, cache_dir)
    result["node_id"] = ray.get_runtime_context().get_node_id()
    return result


def _reachable(address: str) -> None:
    """FleetError (exit 3) when nothing answers at a `HOST:PORT` address (others, such as
    `auto`, are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise FleetError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e}", 3
        ) from None


def _connect_ray(address: str) -> Any:
    """The `ray` module, connected to the cluster at `address` as a driver. FleetError:
    the `ray` extra missing (exit 2), the cluster out of reach (exit 3, naming it)."""
    import importlib.util

    missing = "--executor ray needs the `ray` extra (pip install 'envlock-parity[ray]')"
    if importlib.util.find_spec("ray") is None:
        raise FleetError(f"{missing}: No module named 'ray'", 2)
    _reachable(address)  # before `import ray`, which takes seconds
    try:
        import ray
    except ImportError as e:
        raise FleetError(f"{missing}: {e}", 2) from None
    # A driver started by `uv run` would make every worker re-run the project's `uv run`.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FleetError(f"cannot connect to the Ray cluster at {address}: {first}", 3) from None
    return ray


def _run_ray(
    ray: Any,
    planned: list[_Planned],
    address: str,
    cache_dir: Path | None,
    say: Progress,
    finished: Callable[[int, FleetEntry], None],
) -> None:
    """Each config's check as one Ray task on the cluster `ray` is connected to."""
    nodes = _node_names(ray)
    say(f"checking {len(planned)} configs on the Ray cluster at {address} ({len(nodes)} nodes)")
    task = ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES, retry_exceptions=False)(_ray_check)
    cache = None if cache_dir is None else str(cache_dir)
    pending = {task.remote(p.path, p.timeout, cache): p for p in planned}
    # Every task ends within its timeout once it runs; queued behind the others at
    # worst: a bound on the whole, so a cluster that never schedules one cannot hang.
    deadline = time.monotonic() + sum(p.timeout for p in planned) + 300
    try:
        while pending:
            left = deadline - time.monotonic()
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0))
            if not done:
                for p in pending.values():
                    why = f"not finished on the Ray cluster at {address} in time"
                    finished(p.index, _lost(p, why))
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                break
            ref = done[0]
            p = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the task lost beyond its retries, or it raised
                first = (str(e).strip().splitlines() or [""])[0]
                finished(p.index, _lost(p, f"its Ray task failed: {type(e).__name__}: {first}"))
                continue
            node = str(result.get("node_id") or "")
            if node and node not in nodes:
                nodes = _node_names(ray)
            where = f"ray {nodes.get(node, '?')} ({node[:8]})" if node else "ray"
            finished(p.index, _entry(p, result, where, node or None))
    except BaseException:  # interrupted: the checks still running are killed with their tasks
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise


def _lost(p: _Planned, why: str) -> FleetEntry:
    return FleetEntry(
        config=p.config,
        name=p.name,
        verdict="error",
        exit_code=3,
        reasons=[why],
        seconds=0.0,
        where="ray",
    )


_RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _node_names(ray: Any) -> dict[str, str]:
    """Each node's id and what to call it: its custom resources (a label such as `node2`),
    else its host name."""
    names = {}
    for n in ray.nodes():
        custom = sorted(
            r
            for r in (n.get("Resources") or {})
            if r not in _RAY_RESOURCES and not r.startswith(("node:", "accelerator_type:"))
        )
        names[str(n.get("NodeID"))] = ",".join(custom) or str(
            n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or "?"
        )
    return names
