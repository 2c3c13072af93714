"""`search`: the input, within the input spec's bounds, that two environments disagree on
most, found by hypothesis's targeted search and saved as a replayable case.

Both environments are materialized as `parity check` does, and in each a worker serves
predictions one request at a time (`parity.runs.serving`). The seeded input set
(or the folder of real samples) is replayed through both first, batch by batch, giving
each sample's differences. Then hypothesis runs `examples` examples, one sample each; the
score it maximizes (`hypothesis.target`) is the max abs diff of one output: `output`, by
default the passing output closest to its tolerance, else the output furthest beyond it
(`excess`, `_default_output`).

Each example starts from one of the seeded set's `STARTS` worst samples (worst first, so
hypothesis's first, simplest example is the seeded worst itself) or, as one more choice,
from a fresh sparse array, and adds a dense window of steps to its values around where
that sample's outputs differ most (`_focus`, `_region`), clipped to the bounds (`Space`).
Hypothesis's target phase hill-climbs those steps from the best examples it has seen: a
local search around the seeded worst, which random inputs alone rarely improve on.

The bounds are the input spec's own: the range of the `uniform` and `image` generators
(`low`, `high`, else the dtype's default range), the furthest the `normal` generator can
reach (mean ± 8.57 std: Box-Muller on 53-bit uniforms), and for a folder of samples the
smallest and largest value each array holds. Integers move in steps of 1, floats on a grid
of `FLOAT_STEPS` steps across the range.

The worst input found is saved in a folder: `inputs/worst.npz` (a one-sample folder in the
format `[inputs] folder` reads), `parity.toml` (the config, with that folder as its inputs
and absolute paths, so `parity check --config <case>/parity.toml` replays it) and
`case.json` (what was searched and found).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.envvars import redactor, scrub
from envlock.errors import EnvlockError
from envlock.names import shown_path
from envlock.progress import Progress, quiet
from parity.comparison import OutputComparison
from parity.config import ParityConfig
from parity.errors import ConfigError, ParityError, WorkerError
from parity.inputs.samples import load_samples
from parity.inputs.seeded import ArraySpec, InputSpec, generate, value_range
from parity.jsontext import json_safe, json_text
from parity.judging.judge import check_tolerance_tables, judge_outputs
from parity.policies import TolerancePolicy
from parity.runs.replay import EnvRun, WorkFolder, materialize_all
from parity.runs.serving import Session, serving

if TYPE_CHECKING:
    import numpy as np
    from hypothesis.strategies import DrawFn, SearchStrategy

Arrays = dict[str, "np.ndarray"]

CASE_SCHEMA = 1
DEFAULT_OUT = Path("parity-search-case")
CASE_FILE = "case.json"
CASE_CONFIG = "parity.toml"
CASE_INPUTS = "inputs"
CASE_SAMPLE = "worst.npz"
STARTS = 8  # the seeded set's worst samples an example may start from
WINDOW = 9  # side of the window perturbed in the last two axes (81 elements in a vector)
WINDOW_ELEMENTS = 256  # at most, across leading axes (channels), else one leading index
FLOAT_STEPS = 4096  # the grid floats move on: (high - low) / FLOAT_STEPS
NORMAL_REACH = math.sqrt(-2.0 * math.log(2.0**-53))  # 8.57 std: Box-Muller's furthest


class SearchError(ParityError):
    """A search that cannot run as asked: hypothesis missing, an unknown output, or an
    --out folder that holds something else."""

    exit_code = 2


class _Abort(BaseException):
    """Carries an error out of the hypothesis test function: hypothesis would take an
    Exception for a failing example and shrink it, calling the model again."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Finding:
    """One input and how far apart the two environments' outputs for it are."""

    score: float  # the searched output's max abs diff
    outputs: dict[str, OutputComparison]

    @property
    def failing(self) -> list[str]:
        """The outputs beyond their tolerance, by name."""
        return [name for name, c in self.outputs.items() if not c.passed]

    def describe(self) -> dict[str, Any]:
        """As plain data: each output's max abs diff, whether it passed, and why not."""
        return {
            name: {"max_abs_diff": c.max_abs_diff, "passed": c.passed, "reason": c.reason}
            for name, c in self.outputs.items()
        }


@dataclass(frozen=True)
class SearchResult:
    """What a search found: the worst input's differences against the seeded set's worst,
    and where the case was saved."""

    config: str
    environments: dict[str, str]  # name -> where it ran
    reference: str
    output: str  # the output whose max abs diff was maximized
    policy: str  # that output's tolerance, as the config writes it
    seed: int
    examples: int  # examples run
    worst: Finding
    worst_example: int  # the example (1, 2, ...) that found it
    seeded: Finding  # the seeded set's worst sample, replayed in its batch
    seeded_index: int
    seeded_count: int
    case: str
    seconds: float

    @property
    def verdict(self) -> str:
        """`fail` when an output is beyond its tolerance at the worst input, else `pass`."""
        return "fail" if self.worst.failing else "pass"

    @property
    def exit_code(self) -> int:
        """0: the worst input found is within tolerance; 1: it is a failing case."""
        return 1 if self.worst.failing else 0

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (non-finite numbers as "inf", "nan"), as case.json
        and --json hold it."""
        data = {
            "schema_version": CASE_SCHEMA,
            "verdict": self.verdict,
            "config": self.config,
            "environments": self.environments,
            "reference": self.reference,
            "output": self.output,
            "policy": self.policy,
            "seed": self.seed,
            "examples": self.examples,
            "worst": {
                "max_abs_diff": self.worst.score,
                "example": self.worst_example,
                "outputs": self.worst.describe(),
            },
            "seeded": {
                "max_abs_diff": self.seeded.score,
                "sample": self.seeded_index,
                "count": self.seeded_count,
                "outputs": self.seeded.describe(),
            },
            "case": self.case,
            "replay": f"parity check --config {Path(self.case) / CASE_CONFIG}",
            "seconds": round(self.seconds, 3),
        }
        safe: dict[str, Any] = json_safe(data)
        return safe

    def to_json(self) -> str:
        """The result as JSON text."""
        return json_text(self.to_dict())


@dataclass(frozen=True)
class Space:
    """Where one input array may go: per-sample shape, dtype, bounds, and the grid of
    values a search moves on (`low + k * unit`, k = 0 .. steps)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    low: float
    high: float
    integer: bool

    @property
    def steps(self) -> int:
        """How many steps span the range."""
        return int(self.high - self.low) if self.integer else FLOAT_STEPS

    @property
    def unit(self) -> float:
        """One step."""
        return 1.0 if self.integer else (self.high - self.low) / FLOAT_STEPS

    def cast(self, values: np.ndarray) -> np.ndarray:
        """`values` clipped to the bounds, in the array's dtype."""
        import numpy as np

        values = np.clip(values, self.low, self.high)
        if self.integer:
            values = np.rint(values)
        return values.astype(self.dtype)


@dataclass
class _Sample:
    """A seeded sample a search may start from: its arrays, and for each output where
    its difference is largest."""

    inputs: Arrays
    worst: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...]]] = field(default_factory=dict)


def search(
    config: ParityConfig,
    *,
    examples: int = 200,
    seed: int = 0,
    output: str | None = None,
    out: Path = DEFAULT_OUT,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """Search `examples` inputs for the one the two environments of `config` disagree on
    most (reproducibly: the same `seed` gives the same search), save it as a case in `out`,
    and return what was found.

    Raise `SearchError` (hypothesis missing, an unknown `output`, an `out` that is not a
    case folder), and `WorkerError` or `EnvlockError` when an environment cannot be built
    or its worker fails; the workers are stopped whatever happens."""
    say = progress or quiet
    _require_hypothesis()
    _check_out(out)
    started = time.perf_counter()
    runs = sorted(
        (EnvRun(spec) for spec in config.environments),
        key=lambda r: r.spec.name != config.reference,
    )
    # The workers' logs are kept for whatever went wrong inside an environment.
    with WorkFolder(
        None, say, keep_on=(BaseException,), drop_on=(SearchError, ConfigError)
    ) as work:
        materialize_all(runs, cache_dir, say)
        seeded_inputs = _seeded_inputs(config)
        batches = math.ceil(_count(seeded_inputs) / config.inputs.batch_size)
        # Each worker ends itself when told to or when no request comes for
        # `config.timeout`: this limit on its whole run only guards against one that hangs.
        limit = config.timeout * (batches + 2 * examples + 2)
        with serving(runs, config, work.path, limit, say) as session, _hypothesis_home(work.path):
            result, best = _search(session, config, seeded_inputs, examples, seed, output, say)
        result = dataclasses.replace(result, case=str(out), seconds=time.perf_counter() - started)
        save_case(config, best, out, result)
        return result


def _search(
    session: Session,
    config: ParityConfig,
    seeded_inputs: Arrays,
    examples: int,
    seed: int,
    output: str | None,
    say: Progress,
) -> tuple[SearchResult, Arrays]:
    """Replay the seeded set, then search: the result (without its case folder) and the
    worst input."""
    samples = _replay_seeded(session, config, seeded_inputs, say)
    if output is not None and output not in samples[0][1]:
        have = ", ".join(sorted(samples[0][1]))
        raise SearchError(f"no output {output!r} (the model returns: {have})")
    name = output or _default_output(config, samples)
    # The first of the worst: max() keeps the first of equals.
    seeded_index = max(range(len(samples)), key=lambda i: _order(samples[i][1][name]))
    outputs = samples[seeded_index][1]
    seeded = Finding(outputs[name].max_abs_diff, outputs)
    say(
        f"seeded set: worst {name!r} max abs diff {seeded.score:.3g} (sample {seeded_index} "
        f"of {len(samples)}); searching {examples} examples, seed {seed}"
    )
    ranked = sorted(samples, key=lambda x: -_order(x[1][name]))  # stable: equals by index
    starts = [sample for sample, _ in ranked[:STARTS]]
    spaces = _spaces(config, seeded_inputs)
    hunt = _Hunt(session, config, name, seeded.score, examples, say)
    hunt.run(_strategy(spaces, starts, name), seed)
    assert hunt.best is not None and hunt.best_inputs is not None
    result = SearchResult(
        config=shown_path(config.path),
        environments={s.name: s.description for s in (session.reference, session.candidate)},
        reference=config.reference,
        output=name,
        policy=config.tolerance_for(name).describe(),
        seed=seed,
        examples=hunt.examples,
        worst=hunt.best,
        worst_example=hunt.best_example,
        seeded=seeded,
        seeded_index=seeded_index,
        seeded_count=len(samples),
        case="",
        seconds=0.0,
    )
    return result, hunt.best_inputs


def _require_hypothesis() -> None:
    """Raise `SearchError` saying how to install hypothesis (an optional extra of parity)
    when it is missing."""
    try:
        import hypothesis.extra.numpy  # noqa: F401
    except ImportError:
        raise SearchError(
            "parity search needs hypothesis: pip install 'envlock-parity[search]'"
        ) from None


@contextmanager
def _hypothesis_home(work: Path) -> Iterator[None]:
    """Hypothesis's files (a cache of constants it reads from local modules) in the work
    folder, not in a `.hypothesis` folder wherever the search was started."""
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    previous = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(work / "hypothesis")
    try:
        yield
    finally:
        set_hypothesis_home_dir(previous)


def _check_out(out: Path) -> None:
    """Refuse an `out` that holds anything but an earlier case (it will be replaced)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SearchError(f"{out}: exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if names and (CASE_FILE not in names or not names <= {CASE_FILE, CASE_CONFIG, CASE_INPUTS}):
        raise SearchError(f"{out}: not empty and not a parity search case; name another folder")


def _seeded_inputs(config: ParityConfig) -> Arrays:
    spec = config.inputs
    return generate(spec) if isinstance(spec, InputSpec) else load_samples(spec)


def _count(inputs: Arrays) -> int:
    return min(len(v) for v in inputs.values())


def _judge(config: ParityConfig, ref: Arrays, cand: Arrays) -> dict[str, OutputComparison]:
    """Each output compared under its tolerance, by name."""
    names = (config.reference, *(e.name for e in config.environments if e.name != config.reference))
    return judge_outputs(config, ref, cand, (names[0], names[1])).by_name()


def _replay_seeded(
    session: Session, config: ParityConfig, inputs: Arrays, say: Progress
) -> list[tuple[_Sample, dict[str, OutputComparison]]]:
    """Each seeded sample, replayed batch by batch as a check does, with its outputs'
    comparisons."""
    count = _count(inputs)
    size = config.inputs.batch_size
    samples = []
    for start in range(0, count, size):
        batch = {k: v[start : start + size] for k, v in inputs.items()}
        ref, cand = session.ask(batch)
        if start == 0:  # the first answers name the outputs: a table for none is a typo
            check_tolerance_tables(config, set(ref) | set(cand))
        for j in range(min(size, count - start)):
            outputs = _judge(
                config,
                {k: v[j : j + 1] for k, v in ref.items()},
                {k: v[j : j + 1] for k, v in cand.items()},
            )
            sample = _Sample({k: v[start + j] for k, v in inputs.items()})
            for name, c in outputs.items():
                index = c.worst_index[1:] if c.worst_index is not None else None
                sample.worst[name] = (index, c.reference_shape[1:])
            samples.append((sample, outputs))
        say(f"seeded set: {min(start + size, count)}/{count} samples replayed")
    return samples


def _order(c: OutputComparison) -> float:
    """An output's max abs diff as a finite score to maximize (hypothesis's targets must
    be finite): infinity and NaN become the largest float."""
    return c.max_abs_diff if math.isfinite(c.max_abs_diff) else sys.float_info.max


def excess(c: OutputComparison, policy: TolerancePolicy) -> float:
    """How far beyond its tolerance one output is: above 1 it fails, 0 is no difference.

    The policy's own distance where it has one (`Policy.distance`: allclose's atol needed
    over atol had, ulp's ULP distance over max_ulp); without one (a zero tolerance, or a
    policy that only passes or fails): infinite with a failure, else 0 when nothing
    differs and 1 when something does."""
    ratio = policy.rule.distance(c)
    if ratio is None and not c.passed:
        ratio = math.inf
    elif ratio is None:
        ratio = 1.0 if c.max_abs_diff > 0 or c.mismatched else 0.0
    return max(ratio, 1.0) if not c.passed else min(ratio, 1.0)


def _default_output(
    config: ParityConfig, samples: list[tuple[_Sample, dict[str, OutputComparison]]]
) -> str:
    """The output to search when none is named. Of the outputs that pass on every seeded
    sample but differ somewhere, the one closest to its tolerance: the question before
    shipping is whether some input makes a passing output fail. When none is such, the
    output furthest beyond its tolerance. The first by name among equals."""
    names = sorted(samples[0][1])
    worst = {
        name: max(excess(outputs[name], config.tolerance_for(name)) for _, outputs in samples)
        for name in names
    }
    passing = [
        n for n in names if worst[n] > 0 and all(outputs[n].passed for _, outputs in samples)
    ]
    return max(passing or names, key=lambda n: worst[n])


def _spaces(config: ParityConfig, seeded: Arrays) -> list[Space]:
    """Each input array's search space, from the input spec's bounds (for a folder of
    samples: the smallest and largest value each array holds)."""
    import numpy as np

    spaces = []
    specs = (
        {a.name: a for a in config.inputs.arrays} if isinstance(config.inputs, InputSpec) else {}
    )
    for name in sorted(seeded):
        values = seeded[name]
        dtype = values.dtype
        integer = dtype.kind in "biu"
        spec = specs.get(name)
        if spec is not None:
            low, high = _bounds(spec)
        else:
            low, high = float(values.min()), float(values.max())
        if integer:
            info = np.iinfo(dtype) if dtype.kind != "b" else None
            low, high = float(np.rint(low)), float(np.rint(high))
            if info is not None:
                low, high = max(low, float(info.min)), min(high, float(info.max))
        else:
            top = float(np.finfo(dtype).max)
            low, high = max(low, -top), min(high, top)
        spaces.append(Space(name, tuple(values.shape[1:]), str(dtype), low, high, integer))
    return spaces


def _bounds(a: ArraySpec) -> tuple[float, float]:
    """The range the input spec's generator draws one array's values from."""
    if a.generator == "normal":
        mean, std = a.params.get("mean", 0.0), a.params.get("std", 1.0)
        return mean - NORMAL_REACH * std, mean + NORMAL_REACH * std
    return value_range(a)


def _focus(
    shape: tuple[int, ...], worst: tuple[tuple[int, ...] | None, tuple[int, ...]] | None
) -> tuple[int, ...]:
    """Where in an input sample of `shape` to perturb, from where an output sample differs
    most: the last axes of both are taken as one grid at two resolutions (images,
    sequences). Without a difference, or an output without axes, the sample's centre."""
    focus = [d // 2 for d in shape]
    index, out_shape = worst if worst is not None else (None, ())
    if index is None:
        return tuple(focus)
    for k in range(1, min(2, len(shape), len(out_shape)) + 1):
        focus[-k] = min(shape[-k] - 1, int((index[-k] + 0.5) * shape[-k] / out_shape[-k]))
    return tuple(focus)


def _strategy(spaces: list[Space], starts: list[_Sample], output: str) -> SearchStrategy[Arrays]:
    """The hypothesis strategy of one example: a dict of one-sample arrays."""
    import hypothesis.extra.numpy as hnp
    import hypothesis.strategies as st
    import numpy as np

    @st.composite
    def example(draw: DrawFn) -> Arrays:
        k = draw(st.integers(0, len(starts)))  # len(starts): a fresh sparse array
        sample = {}
        for space in spaces:
            if k < len(starts):
                base = starts[k].inputs[space.name]
                focus = _focus(space.shape, starts[k].worst.get(output))
            else:
                grid = draw(hnp.arrays(np.int64, space.shape, elements=st.integers(0, space.steps)))
                base = space.cast(space.low + grid * space.unit)
                focus = _focus(space.shape, None)
            region = _region(space.shape, focus, draw)
            steps = draw(
                hnp.arrays(
                    np.int64,
                    base[region].shape,
                    elements=st.integers(-space.steps, space.steps),
                    fill=st.nothing(),
                )
            )
            moved = base.copy()
            moved[region] = space.cast(base[region].astype(np.float64) + steps * space.unit)
            sample[space.name] = moved[np.newaxis]
        return sample

    return example()


def _region(shape: tuple[int, ...], focus: tuple[int, ...], draw: DrawFn) -> tuple[Any, ...]:
    """The window of one sample an example perturbs: `WINDOW` x `WINDOW` of the last two
    axes (`WINDOW`² of a vector's) around `focus`, across every leading axis while that
    stays within `WINDOW_ELEMENTS`, else at one leading index the example draws."""
    import hypothesis.strategies as st
    import numpy as np

    if not shape:
        return ()
    spatial = 2 if len(shape) >= 2 else 1
    side = WINDOW if spatial == 2 else WINDOW * WINDOW
    region: list[Any] = []
    for d, f in zip(shape[-spatial:], focus[-spatial:], strict=True):
        width = min(d, side)
        first = min(max(f - width // 2, 0), d - width)
        region.append(slice(first, first + width))
    leading = shape[:-spatial]
    planes = math.prod(leading)
    window = math.prod(s.stop - s.start for s in region)
    if planes * window <= WINDOW_ELEMENTS:
        return (*(slice(None) for _ in leading), *region)
    plane = draw(st.integers(0, planes - 1))
    return (*(int(i) for i in np.unravel_index(plane, leading)), *region)


class _Hunt:
    """The hypothesis test function's state: examples run, and the worst seen."""

    def __init__(
        self,
        session: Session,
        config: ParityConfig,
        output: str,
        seeded: float,
        examples: int,
        say: Progress,
    ) -> None:
        self.session = session
        self.config = config
        self.output = output
        self.seeded = seeded
        self.budget = examples
        self.say = say
        self.every = max(1, examples // 10)
        self.examples = 0
        self.best_score = -1.0
        self.best: Finding | None = None
        self.best_inputs: Arrays | None = None
        self.best_example = 0

    def probe(self, inputs: Arrays) -> float:
        """Run one example through both environments; its score."""
        ref, cand = self.session.ask(inputs)
        outputs = _judge(self.config, ref, cand)
        if self.output not in outputs:
            raise WorkerError(self.session.reference.name, f"no output {self.output!r}")
        score = _order(outputs[self.output])
        self.examples += 1
        if score > self.best_score:
            self.best_score = score
            self.best = Finding(outputs[self.output].max_abs_diff, outputs)
            self.best_inputs = inputs
            self.best_example = self.examples
        if self.examples % self.every == 0 or self.examples == self.budget:
            assert self.best is not None
            self.say(
                f"searched {self.examples}/{self.budget}: worst {self.output!r} max abs diff "
                f"{self.best.score:.3g} (example {self.best_example}; seeded set "
                f"{self.seeded:.3g})"
            )
        return score

    def run(self, strategy: SearchStrategy[Arrays], seed: int) -> None:
        """Run the targeted search: `self.budget` examples from `seed`, no database, no
        shrinking (nothing fails), no time limits."""
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
        from hypothesis import seed as seeded

        label = f"max abs diff of {self.output}"

        @seeded(seed)
        @settings(
            max_examples=self.budget,
            database=None,
            deadline=None,
            derandomize=False,
            phases=(Phase.explicit, Phase.generate, Phase.target),
            suppress_health_check=(
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ),
            verbosity=Verbosity.quiet,
            print_blob=False,
        )
        @given(strategy)
        def example(inputs: Arrays) -> None:
            try:
                score = self.probe(inputs)
            except (ParityError, EnvlockError, OSError) as e:
                raise _Abort(e) from None
            target(score, label=label)

        try:
            example()
        except _Abort as stop:
            raise stop.error from None


def save_case(config: ParityConfig, inputs: Arrays, out: Path, result: SearchResult) -> None:
    """Write the case folder: the worst input as a one-sample folder, a config that
    replays it, and case.json; it replaces an earlier case in `out` whole."""
    import numpy as np

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / CASE_INPUTS).mkdir(parents=True)
    np.savez(tmp / CASE_INPUTS / CASE_SAMPLE, **{k: v[0] for k, v in inputs.items()})
    (tmp / CASE_CONFIG).write_text(case_config(config), encoding="utf-8")
    secrets = redactor()  # no value of a secret-looking variable of ours (envlock.envvars)
    (tmp / CASE_FILE).write_text(secrets.redact(scrub(result, secrets).to_json()), "utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def case_config(config: ParityConfig) -> str:
    """The config as TOML with the case's one sample as its input set and every path
    absolute, so it replays from wherever the case folder is."""
    import tomli_w

    raw = tomllib.loads(config.path.read_text(encoding="utf-8"))
    raw.setdefault("model", {})["paths"] = [str(p) for p in config.model_paths]
    for name, table in raw.get("environments", {}).items():
        lock = config.environment(name).lock
        if isinstance(table, dict) and "lock" in table and lock is not None:
            table["lock"] = str(lock)
    raw["inputs"] = {"folder": CASE_INPUTS, "batch_size": 1}
    header = (
        f"# The worst input `parity search` found (see {CASE_FILE}), written from "
        f"{shown_path(config.path)}.\n# Replay it: parity check --config <this file>\n\n"
    )
    return header + tomli_w.dumps(raw)
