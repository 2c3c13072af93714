"""What a user reads: the terminal rendering (rich) and the Markdown summary of a report.

Outputs come from real comparisons of small arrays; reports are built from the
dataclasses directly, so no environment is materialized.
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pytest
from rich.console import Console

from parity.comparison import Noise, OutputComparison
from parity.judging.compare import compare_arrays
from parity.policies import TolerancePolicy
from parity.render.html import render_html
from parity.render.junit import render_junit
from parity.render.markdown import render_markdown
from parity.render.progress import progress_printer
from parity.render.terminal import WIDTH, render_terminal, render_text, stdout_console
from parity.report import EnvironmentSummary, ParityReport, VersionDiff

ANSI = re.compile(r"\x1b\[[0-9;]*m")
REF = np.ones((4, 25))
# |a - b| runs 0, 0.001, ..., 0.099: max 0.099, median 0.0495, p99 0.098
DRIFTED = REF + 0.001 * np.arange(100).reshape(4, 25)


def environment(name: str, **fields: object) -> EnvironmentSummary:
    values: dict[str, object] = {
        "name": name,
        "backend": "venv",
        "description": f"venv for {name}",
        "lock": "locks/pylock.toml",
        "lock_digest": "sha256:0123456789abcdef0123",
        "group": "main",
        "python": "3.11.9",
        "platform": "Linux-x86_64",
        "packages": {"numpy": "2.4.6", "torch": "2.13.0"},
        "env": {},
        "libraries": {},
        "cpu": {},
        "created": False,
        "seconds": {},
    }
    values.update(fields)
    return EnvironmentSummary(**values)  # type: ignore[arg-type]


def report(
    outputs: list[OutputComparison],
    *,
    version_diffs: list[VersionDiff] | None = None,
    errors: list[str] | None = None,
    calibrated: bool = False,
    environments: dict[str, EnvironmentSummary] | None = None,
) -> ParityReport:
    """A report whose verdict and reasons follow from its parts, as `run_check` makes them."""
    reasons = [f"output {o.name!r}: {o.reason}" for o in outputs if not o.passed]
    reasons += [f"{d.name} differs" for d in version_diffs or [] if d.fails]
    return ParityReport(
        verdict="error" if errors else ("fail" if reasons else "pass"),
        config="parity.toml",
        reference="train",
        candidate="infer",
        inputs={"count": 8, "seed": 7, "digest": "sha256:feedfacecafebeef0123456789"},
        environments=environments
        if environments is not None
        else {"train": environment("train"), "infer": environment("infer")},
        outputs=outputs,
        version_diffs=version_diffs or [],
        reasons=reasons,
        errors=errors or [],
        calibrated=calibrated,
    )


def row(text: str, name: str) -> str:
    """The first line of the outputs table that holds output `name`."""
    return next(line for line in text.splitlines() if re.match(rf"[✓✗] {re.escape(name)}\s", line))


def test_passing_report_leads_with_the_verdict_and_its_config() -> None:
    out = compare_arrays("logits", REF, REF.copy(), TolerancePolicy(kind="exact"))
    text = render_text(report([out]), color=False)
    lines = text.splitlines()
    assert lines[0] == "parity check: PASS  (parity.toml)"
    assert lines[1] == "inputs: 8 samples, seed 7, sha256:feedfacecafebeef…"
    assert re.search(r"^✓ logits\s+exact\s+0/100 elements\s", text, re.M)
    assert "identical" in row(text, "logits")
    assert "version differences: none" in lines


def test_failing_output_shows_its_numbers_and_what_would_pass() -> None:
    out = compare_arrays("y", REF, DRIFTED, TolerancePolicy(atol=0.05))
    text = render_text(report([out]), color=False)
    assert text.startswith("parity check: FAIL  (parity.toml)\n")
    cells = row(text, "y").split()
    # output, policy (first setting), mismatched, max/median/p99 abs, max rel, atol to pass
    assert cells[:5] == ["✗", "y", "allclose(atol=0.05,", "50/100", "elements"]
    assert cells[5:9] == ["0.099", "0.0495", "0.098", "0.099"]
    assert cells[9:] == ["atol", "≥", "0.099"]
    below = text.splitlines()[text.splitlines().index(row(text, "y")) + 1].split()
    assert below == ["rtol=0)", "(50%)", "rtol", "≥", "0.049"]
    assert (
        "  ✗ y (tolerance): 50 of 100 elements beyond atol=0.05, rtol=0 (max abs diff 0.099)\n"
        in (text)
    )
    assert "      worst at [3, 24]: 1 (train) vs 1.099 (infer)\n" in text
    assert "  - output 'y': 50 of 100 elements beyond atol=0.05" in text  # why:


@pytest.mark.parametrize(
    ("candidate", "policy", "shown", "advice"),
    [
        (
            np.nextafter(REF, 2.0),
            TolerancePolicy(kind="ulp", max_ulp=4),
            ["ULP", "1"],
            ["max_ulp ≥ 1", ""],
        ),
        (
            DRIFTED,
            TolerancePolicy(kind="psnr", min_db=20),
            ["PSNR", "24.84 dB"],
            ["min_db", "≤ 24.83"],  # PSNR 24.8399…, rounded down so that it passes
        ),
    ],
    ids=["ulp", "psnr"],
)
def test_policy_measure_is_shown_where_the_policy_has_one(
    candidate: np.ndarray, policy: TolerancePolicy, shown: list[str], advice: list[str]
) -> None:
    out = compare_arrays("y", REF, candidate, policy)
    text = render_text(report([out]), color=False)
    assert re.search(r"\smeasure\s", text)
    first, second = text.splitlines()[text.splitlines().index(row(text, "y")) :][:2]
    # the measure's name, and below it its value, just left of what would pass in the
    # policy's own terms (never an atol or rtol the policy does not have)
    assert re.search(rf"\s{shown[0]}\s+{advice[0]}$", first), first
    assert re.search(rf"\s{shown[1]}\s*{advice[1]}$", second), second
    assert "atol" not in first + second and "rtol" not in first + second
    assert first.split()[2].startswith(policy.kind)


def test_decision_policy_counts_rows() -> None:
    scores = np.eye(4)
    flipped = scores[[0, 1, 3, 2]]
    out = compare_arrays("label", scores, flipped, TolerancePolicy(kind="decision"))
    text = render_text(report([out]), color=False)
    assert "2/4 rows" in row(text, "label")
    assert "✗ label (tolerance): argmax agreement 0.5 (2 of 4 rows differ)" in text
    # Both disagreeing rows, each with the class either environment chose.
    assert "      disagrees at [2]: 2 (train) vs 3 (infer)\n" in text
    assert "      disagrees at [3]: 3 (train) vs 2 (infer)\n" in text


def test_decision_shows_its_agreement_and_rows_not_atol_advice() -> None:
    # REF's rows are all ties (argmax 0); DRIFTED's rows rise (argmax 24).
    scores = compare_arrays("scores", REF, DRIFTED, TolerancePolicy(kind="decision"))
    ids = np.arange(128) % 10
    moved = ids.copy()
    moved[[3, 17, 40, 41, 60, 77, 90, 127]] += 1
    labels = compare_arrays("label", ids, moved, TolerancePolicy(kind="decision"))
    assert labels.atol_to_pass == 1 and scores.atol_to_pass > 0  # kept in the JSON
    text = render_text(report([scores, labels]), color=False)
    lines = text.splitlines()
    for name, agreement, bound in (("scores", "0", "0"), ("label", "0.9375", "0.9375")):
        first, second = lines[lines.index(row(text, name)) :][:2]
        # the measure, and where allclose would give atol and rtol: the agreement that passes
        assert re.search(r"\sagreement\s+min_agreement$", first), first
        assert re.search(rf"\s{re.escape(agreement)}\s+≤ {re.escape(bound)}$", second), second
    assert "atol ≥" not in text and "rtol ≥" not in text
    assert "worst at" not in text
    assert "✗ label (tolerance): label agreement 0.9375 (8 of 128 rows differ)" in text
    assert "      disagrees at [3]: 3 (train) vs 4 (infer)\n" in text
    assert "      and 3 more rows\n" in text  # five named, of eight
    markdown = render_markdown(report([scores, labels]))
    label_row = next(line for line in markdown.splitlines() if line.startswith("| `label`"))
    # no |a - b| statistics for labels: the rows, the agreement, and what would pass
    assert "| 8 / 128 rows (6.25%) | - | - | - | - | min_agreement ≤ 0.9375 |" in label_row
    assert label_row.endswith("| min_agreement ≤ 0.9375 | agreement 0.9375 |")
    assert "- `label`: disagrees at [3]: 3 (train) vs 4 (infer)" in markdown
    assert "worst at" not in markdown


def test_no_measure_column_for_plain_tolerances() -> None:
    out = compare_arrays("y", REF, DRIFTED, TolerancePolicy(atol=0.1))
    assert "measure" not in render_text(report([out]), color=False)


def test_noisy_environment_is_named_nondeterministic() -> None:
    noise = {"train": Noise(0.0, 0, 100), "infer": Noise(0.01, 40, 100)}
    failing = compare_arrays("y", REF, DRIFTED, TolerancePolicy(atol=0.05), noise=noise)
    calm = compare_arrays("z", REF, DRIFTED, TolerancePolicy(noise_factor=10), noise=noise)
    assert (failing.passed, calm.passed) == (False, True)
    text = render_text(report([failing, calm], calibrated=True), color=False)
    assert "  ✗ y (nondeterministic): nondeterministic, not drift: infer" in text
    assert (
        "  ~ z: nondeterministic: infer disagrees with itself "
        "(max abs diff 0.01 between two runs, 40/100 elements)"
    ) in text
    assert "allclose(atol=0.1," in row(text, "z")  # the calibrated atol: 10 x the noise
    noise_table = text.split("noise (each environment against a second run of itself):\n")[1]
    assert re.search(
        r"^y\s+bitwise identical\s+max abs 0.01, 40/100 elements differ$", noise_table, re.M
    )


def test_noise_table_only_when_calibrated() -> None:
    out = compare_arrays("y", REF, REF.copy())
    assert "noise" not in render_text(report([out]), color=False)


def test_environments_table_names_the_reference() -> None:
    text = render_text(report([]), color=False)
    train = next(line for line in text.splitlines() if line.startswith("train"))
    assert train.split()[:7] == [
        "train",
        "(reference)",
        "venv",
        "3.11.9",
        "Linux-x86_64",
        "2",
        "locks/pylock.toml",
    ]
    assert "sha256:0123456789ab…" in text
    assert re.search(r"^infer \(candidate\)", text, re.M)


NUMPY = VersionDiff(
    name="numpy",
    versions={"train": "2.4.6", "infer": "1.26.4"},
    severity="numerics",
    expected=False,
    note="NEP 50 changed scalar promotion",
    fails=True,
)
TQDM = VersionDiff(
    name="tqdm",
    versions={"train": "4.67.1", "infer": None},
    severity="benign",
    expected=True,
    note="only in the train group",
)


def test_version_differences_table() -> None:
    text = render_text(report([], version_diffs=[NUMPY, TQDM]), color=False)
    lines = text.splitlines()
    assert lines[0] == "parity check: FAIL  (parity.toml)"
    assert "version differences:" in lines
    numpy = next(line for line in lines if line.startswith("numpy"))
    assert numpy.split() == ["numpy", "2.4.6", "1.26.4", "numerics", "fails", *NUMPY.note.split()]
    tqdm = next(line for line in lines if line.startswith("tqdm"))
    assert tqdm.split()[:5] == ["tqdm", "4.67.1", "-", "benign", "expected"]


def test_a_simd_feature_list_wraps_after_its_commas_and_the_table_stays_a_table() -> None:
    # numpy 1.26 names its SIMD features one by one, without spaces: as one long word the
    # table could not fit 120 columns and fell back to records.
    simd = VersionDiff(
        name="numpy simd",
        versions={"train": "X86_V3", "infer": "SSSE3,SSE41,POPCNT,SSE42,AVX,F16C,FMA3,AVX2"},
        severity="numerics",
        expected=False,
        note="follows numpy's version; this changes which kernels compute the numbers.",
        caused_by="numpy",
    )
    numpy = dataclasses.replace(
        NUMPY,
        note="the locks pin different versions (locks/pylock.toml vs "
        "examples/numpy-drift/locks/pylock.toml); NEP 50 changed scalar promotion",
    )
    text = render_text(report([], version_diffs=[numpy, simd]), color=False)
    lines = text.splitlines()
    assert re.search(r"^package\s+train\s+infer\s+severity\s+counts\s+note$", text, re.M)
    row = next(i for i, line in enumerate(lines) if line.startswith("  ↳ numpy simd"))
    listed = " ".join(line[: lines[row].index("numerics")] for line in lines[row : row + 6])
    features = ["SSSE3", "SSE41", "POPCNT", "SSE42", "AVX", "F16C", "FMA3", "AVX2"]
    assert [w.strip(",") for w in listed.split() if w.strip(",") in features] == features


def test_colour_marks_verdict_failures_and_expected_differences() -> None:
    out = compare_arrays("y", REF, DRIFTED, TolerancePolicy(atol=0.05))
    parity_report = report([out], version_diffs=[NUMPY, TQDM])
    colored = render_text(parity_report, color=True)
    plain = render_text(parity_report, color=False)
    assert "\x1b[" not in plain
    assert ANSI.sub("", colored) == plain  # colour adds styling, never changes the text
    assert colored.startswith("parity check: \x1b[1;31mFAIL\x1b[0m")
    assert "\n\x1b[1;31m✗ \x1b[0my " in colored  # the mark is red, the name is not
    numpy = next(line for line in colored.splitlines() if "numpy" in line)
    assert numpy.startswith("\x1b[1;31mnumpy")  # a failing difference: bold red
    tqdm = next(line for line in colored.splitlines() if "tqdm" in line)
    assert tqdm.startswith("\x1b[2mtqdm") and "\x1b[2;36mexpected" in tqdm  # dim, cyan
    passing = render_text(report([compare_arrays("y", REF, REF)]), color=True)
    assert passing.startswith("parity check: \x1b[1;32mPASS\x1b[0m")


def test_color_none_is_plain_in_a_string(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    out = compare_arrays("y", REF, DRIFTED)
    assert "\x1b" not in render_text(report([out]))


def test_text_from_environments_is_printed_literally() -> None:
    # Package names, notes and worker logs come from inside the environments.
    hostile = VersionDiff(
        name="[bold red]x[/]",
        versions={"train": "[b]1.0[/b]", "infer": "2.0"},
        severity="runtime",
        expected=False,
        note="[link=https://evil.example]see[/link] :smile: [blink]",
    )
    out = compare_arrays("[i]y[/i]", REF, DRIFTED)
    error = "infer: worker exited with status 1; last output:\n\x1b[31mboom\x1b[0m\rgone"
    for color in (False, True):
        text = ANSI.sub("", render_text(report([out], version_diffs=[hostile]), color=color))
        assert "[bold red]x[/]" in text
        assert "[b]1.0[/b]" in text
        assert "[link=https://evil.example]see[/link] :smile: [blink]" in text
        assert "✗ [i]y[/i] (tolerance)" in text
    text = render_text(report([], errors=[error]), color=False)
    assert "errors:\n  infer: worker exited with status 1; last output:\n" in text
    assert "\\x1b[31mboom\\x1b[0m\\x0dgone" in text  # visible, and cannot overwrite the line
    assert "\x1b" not in text and "\r" not in text


def test_error_report_keeps_tracebacks_whole() -> None:
    long_line = "ValueError: " + "weights file is corrupt " * 8
    error = (
        f'infer: worker exited with status 1\n  File "m.py", line 3, in predict\n    {long_line}'
    )
    text = render_text(report([], errors=[error]), color=False)
    assert text.startswith("parity check: ERROR  (parity.toml)\n")
    assert len(long_line) > WIDTH
    assert f'  File "m.py", line 3, in predict\n    {long_line}\n' in text  # not wrapped


def test_an_error_both_environments_raise_shows_its_traceback_once() -> None:
    def failed(env: str, folder: str) -> str:
        return (
            f"environment {env!r}: the model failed in the worker (predict): TypeError: bad\n"
            f'Traceback (most recent call last):\n  File "{folder}/m.py", line 3, in predict\n'
            "TypeError: bad"
        )

    other = "environment 'infer': the model failed in the worker (load): OSError: gone\nTrace"
    errors = [failed("train", "/a"), failed("infer", "/b"), other]
    text = render_text(report([], errors=errors), color=False)
    assert text.count("Traceback (most recent call last)") == 1
    assert '"/a/m.py"' in text and '"/b/m.py"' not in text
    assert (
        "  environment 'infer': the model failed in the worker (predict): TypeError: bad\n"
        "    (the same traceback as environment 'train')\n"
    ) in text
    assert "OSError: gone\nTrace" in text  # a different error is shown whole


def test_progress_lines_are_plain_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress_printer(quiet=False)("infer: [bold]ready[/] in 2.1s")
    progress_printer(quiet=True)("not shown")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "parity: infer: [bold]ready[/] in 2.1s\n")


def test_progress_lines_get_a_timestamp_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    progress_printer(quiet=False)("infer: [bold]ready[/]")
    err = capsys.readouterr().err
    assert "\x1b[2m" in err  # the timestamp is dim
    assert re.fullmatch(r"\d\d:\d\d:\d\d parity: infer: \[bold\]ready\[/\]\n", ANSI.sub("", err))


def test_stdout_off_a_terminal_has_a_fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    console = stdout_console()
    assert not console.is_terminal
    assert console.width == WIDTH


def test_markdown_shows_policy_statistics_and_cause() -> None:
    out = compare_arrays("y", REF, DRIFTED, TolerancePolicy(atol=0.05))
    text = render_markdown(report([out]))
    header = next(line for line in text.splitlines() if line.startswith("| output |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "output",
        "result",
        "policy",
        "mismatched",
        "max abs diff",
        "median abs diff",
        "p99 abs diff",
        "max rel diff",
        "would pass",
    ]
    assert (
        "| `y` | **fail** (tolerance): 50 of 100 elements beyond atol=0.05, rtol=0 (max abs diff "
        "0.099) | `allclose(atol=0.05, rtol=0)` | 50 / 100 elements (50%) | 0.099 | 0.0495 "
        "| 0.09801 | 0.099 | atol ≥ 0.099 or rtol ≥ 0.049 |"
    ) in text
    assert "- `y`: worst at [3, 24]: 1 (train) vs 1.099 (infer)" in text


def test_markdown_shows_policy_measures_and_noise() -> None:
    noise = {"train": Noise(0.0, 0, 100), "infer": Noise(0.01, 40, 100)}
    outputs = [
        compare_arrays("ulp", REF, np.nextafter(REF, 2.0), TolerancePolicy(kind="ulp")),
        compare_arrays("label", REF, DRIFTED, TolerancePolicy(kind="decision")),
        compare_arrays("image", REF, DRIFTED, TolerancePolicy(kind="psnr", min_db=20)),
        compare_arrays("z", REF, DRIFTED, TolerancePolicy(noise_factor=10), noise=noise),
    ]
    text = render_markdown(report(outputs, calibrated=True))
    assert "| ULP / agreement / PSNR | noise in train | noise in infer |" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert "| ULP 1 |" in rows["| `ulp`"] and "**fail** (tolerance)" in rows["| `ulp`"]
    assert "| 4 / 4 rows (100%) |" in rows["| `label`"] and "| agreement 0 |" in rows["| `label`"]
    assert "| PSNR 24.84 dB |" in rows["| `image`"]
    assert rows["| `z`"].startswith("| `z` | pass (nondeterministic) |")
    assert rows["| `z`"].endswith("| - | none | 0.01 (40 / 100 differ) |")
    assert (
        "- `z` is nondeterministic: infer disagrees with itself "
        "(max abs diff 0.01 between two runs, 40 of 100 elements)"
    ) in text


@pytest.mark.parametrize("width", [60, 80, 100, 160])
@pytest.mark.parametrize("envs", [("train", "infer"), ("training_environment", "serving_env_v2")])
def test_no_name_is_broken_at_any_width(width: int, envs: tuple[str, str]) -> None:
    ref, cand = envs
    outputs = [
        compare_arrays("super_resolution_float", REF, DRIFTED, TolerancePolicy(atol=0.05)),
        compare_arrays("class_probabilities", REF, REF, TolerancePolicy(atol=0.05)),
    ]
    packages = ["nvidia-cuda-runtime-cu12", "scikit-learn", "numpy"]
    diffs = [
        VersionDiff(
            name=name,
            versions={ref: "12.4.127", cand: None},
            severity="runtime",
            expected=False,
            note=f"installed in {ref} only; check whether the model uses it.",
        )
        for name in packages
    ]
    r = dataclasses.replace(
        report(
            outputs,
            version_diffs=diffs,
            environments={ref: environment(ref), cand: environment(cand)},
        ),
        reference=ref,
        candidate=cand,
    )
    out = io.StringIO()
    render_terminal(r, Console(file=out, width=width, no_color=True, highlight=False))
    text = out.getvalue()
    lines = text.splitlines()
    for name in [*packages, *(o.name for o in outputs), ref, cand]:
        # whole on one line, as a name (not only inside a longer word)
        assert any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line) for line in lines), (
            f"{name!r} is broken at width {width}:\n{text}"
        )
    assert "…" not in text.replace("sha256:0123456789ab…", "").replace("feedfacecafebeef…", "")
    # the tables still hold every number and note
    words = " ".join(text.split())
    assert "0.099" in words and words.count("check whether the model uses") == len(packages)
    # every table line fits (the lines tables print; free text lines wrap on their own)
    table_lines = [line for line in lines if not line.startswith(("  ✗", "  -", "      worst"))]
    assert max(len(line) for line in table_lines) <= width


# Each policy, a failing output, and what would pass in its own terms (None: no setting).
ROWS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
ADVICE = [
    ("allclose", REF, DRIFTED, TolerancePolicy(atol=0.05), "atol ≥ 0.099"),
    ("exact", REF, DRIFTED, TolerancePolicy(kind="exact"), None),
    (
        "ulp",
        REF,
        np.nextafter(np.nextafter(REF, 2.0), 2.0),
        TolerancePolicy(kind="ulp"),
        "max_ulp ≥ 2",
    ),
    (
        "cosine",
        ROWS,
        ROWS + np.array([[0, 0.1], [0, 0], [0, 0]]),
        TolerancePolicy(kind="cosine"),
        "min_cosine ≤ 0.995037",
    ),
    ("psnr", REF, DRIFTED, TolerancePolicy(kind="psnr", min_db=30), "min_db ≤ 24.83"),
    (
        "decision",
        np.eye(4),
        np.eye(4)[[0, 1, 3, 2]],
        TolerancePolicy(kind="decision"),
        "min_agreement ≤ 0.5",
    ),
]


@pytest.mark.parametrize(
    ("kind", "ref", "cand", "policy", "advice"), ADVICE, ids=[a[0] for a in ADVICE]
)
def test_every_renderer_advises_in_the_policys_own_terms(
    kind: str, ref: np.ndarray, cand: np.ndarray, policy: TolerancePolicy, advice: str | None
) -> None:
    out = compare_arrays(kind, ref, cand, policy)
    assert not out.passed and out.policy == kind
    r = report([out])
    texts = {
        "terminal": render_text(r, color=False),
        "markdown": render_markdown(r),
        "html": render_html(r),
        "junit": render_junit(r),
    }
    for name, text in texts.items():
        tolerance_advice = re.search(
            r"atol (≥|>=|&gt;=)|rtol (≥|>=|&gt;=)|atol to pass|rtol to pass", text
        )
        assert (tolerance_advice is not None) == (kind == "allclose"), (name, text)
        if advice is not None and not (name in ("html", "junit") and kind == "allclose"):
            # the terminal's cell puts " ≤ value" on a line of its own
            parts = advice.split(" ≤ ") if name == "terminal" else [advice]
            assert all(part in text for part in parts), (name, text)
    if advice is None:  # no setting of the policy passes: no advice at all
        assert "would pass: " not in texts["junit"] and "would pass" not in texts["html"]
        row = next(
            line for line in texts["markdown"].splitlines() if line.startswith(f"| `{kind}`")
        )
        assert row.endswith("| - |")
    # the JSON report keeps its fields for every policy (their meaning unchanged)
    assert "atol_to_pass" in r.to_dict()["outputs"][0]
