"""`render_html` gives one self-contained page a user can read: verdict, every output with
its numbers, histogram and heatmap, version differences, and nothing from the report
executed or fetched. The side-by-side pictures and per-column views: test_pictures.py.

Reports are built from real comparisons of small arrays, so no environment is needed. The
Chromium test renders the page headless; it skips where no Chromium is installed, unless
PARITY_REQUIRE_CHROMIUM=1.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from parity.cli import main as parity_main
from parity.comparison import Noise, OutputComparison
from parity.judging.compare import compare_arrays
from parity.policies import TolerancePolicy, would_pass
from parity.render.html import render_html
from parity.report import EnvironmentSummary, ParityReport, VersionDiff

# What a hostile environment could put in a package name or a worker's message.
SCRIPT = "<script>document.body.setAttribute('data-pwned', '1')</script>"
IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned', '2')\">"


def image_output() -> OutputComparison:
    """A (4, 96, 96) float32 output: float noise everywhere, a drifted region, one inf."""
    rng = np.random.default_rng(0)
    reference = rng.random((4, 96, 96), dtype=np.float32)
    candidate = reference + rng.normal(0, 1e-7, reference.shape).astype(np.float32)
    candidate[:, 20:40, 50:80] += np.float32(1e-3)
    candidate[1, 30, 60] = np.inf
    policy = TolerancePolicy(atol=1e-5, rtol=1e-4)
    return compare_arrays("depth", reference, candidate, policy, pictures=True)


def mask_output() -> OutputComparison:
    """A (2, 48, 64) uint8 mask under `exact` that differs in a few pixels."""
    reference = np.zeros((2, 48, 64), dtype=np.uint8)
    reference[:, 10:30, 10:40] = 255
    candidate = reference.copy()
    candidate[0, 10, 10:14] = 0
    candidate[1, 40, 60] = 1
    return compare_arrays(
        "mask", reference, candidate, TolerancePolicy(kind="exact"), pictures=True
    )


def label_output() -> OutputComparison:
    """(16, 10) logits under a decision policy: one row's argmax flips, within the policy."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(16, 10)).astype(np.float32)
    candidate = reference + np.float32(1e-4)
    row = candidate[3]
    row[np.argsort(row)[-2]] = row.max() + 1
    policy = TolerancePolicy(kind="decision", min_agreement=0.9)
    return compare_arrays("label", reference, candidate, policy, pictures=True)


def score_output() -> OutputComparison:
    """A 1-D float32 output that passes, from a calibrated check where one env is noisy."""
    reference = np.linspace(0, 1, 16, dtype=np.float32)
    candidate = reference + np.float32(1e-7)
    noise = {"train": Noise(0.0, 0, 16), "infer": Noise(2e-7, 2, 16)}
    policy = TolerancePolicy(atol=1e-6)
    return compare_arrays("score", reference, candidate, policy, noise=noise)


def environment(name: str, description: str, packages: dict[str, str]) -> EnvironmentSummary:
    return EnvironmentSummary(
        name=name,
        backend="venv",
        description=description,
        lock=f"locks/{name}.lock",
        lock_digest="sha256:" + "ab" * 32,
        group=name,
        python="3.11.9",
        platform="Linux-x86_64",
        packages=packages,
        env={},
        libraries={},
        cpu={},
        created=False,
        seconds={"worker": 3.2},
    )


def failing_report() -> ParityReport:
    outputs = [image_output(), mask_output(), label_output(), score_output()]
    diffs = [
        VersionDiff(
            name="numpy",
            versions={"train": "2.4.6", "infer": "1.26.4"},
            severity="numerics",
            expected=False,
            note="NEP 50 changed scalar promotion",
            fails=True,
        ),
        VersionDiff(
            name=SCRIPT,
            versions={"train": IMG, "infer": None},
            severity="benign",
            expected=True,
            note="only in the train group",
        ),
    ]
    return ParityReport(
        verdict="fail",
        config="examples/parity.toml",
        reference="train",
        candidate="infer",
        inputs={"count": 8, "seed": 7, "digest": "sha256:" + "5e" * 32},
        environments={
            "train": environment("train", "venv from locks/train.lock", {"numpy": "2.4.6"}),
            "infer": environment("infer", IMG, {"numpy": "1.26.4", SCRIPT: "1"}),
        },
        outputs=outputs,
        version_diffs=diffs,
        reasons=[f"output {o.name!r}: {o.reason}" for o in outputs if not o.passed]
        + ["numpy differs: 2.4.6 (train), 1.26.4 (infer) [numerics]"],
        seconds={"total": 42.0},
        calibrated=True,
    )


def error_report() -> ParityReport:
    return dataclasses.replace(
        failing_report(),
        verdict="error",
        outputs=[],
        version_diffs=[],
        reasons=[],
        errors=[f"infer: worker exited with status 1; last output:\n{SCRIPT}\n{IMG}\x1b[0m\udcff"],
    )


@pytest.fixture(scope="module")
def report() -> ParityReport:
    return failing_report()


@pytest.fixture(scope="module")
def page(report: ParityReport) -> str:
    return render_html(report)


class Element:
    """One element of a parsed page, enough to look things up the way a user would."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.parts: list[str | Element] = []  # text and child elements, in page order

    @property
    def children(self) -> list[Element]:
        return [p for p in self.parts if isinstance(p, Element)]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text() for p in self.parts)

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        found = [c for c in self.children if c.tag == tag and (cls is None or cls in c.classes)]
        return found + [e for c in self.children for e in c.find_all(tag, cls)]


VOID = {"meta", "br", "img", "hr", "input", "link", "wbr"}


class PageParser(HTMLParser):
    """Parses into `Element`s and records every unbalanced tag it meets."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].parts.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].parts.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self.stack[-1].tag != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse(text: str) -> Element:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    open_tags = [e.tag for e in parser.stack[1:]]
    assert not parser.problems and not open_tags, (parser.problems, open_tags)
    return parser.root


def sections(root: Element) -> dict[str, Element]:
    """Each output's section, by the output name its heading shows."""
    found = {}
    for section in root.find_all("section", "output"):
        (name,) = section.find_all("code", "name")
        found[name.text()] = section
    return found


def facts(element: Element) -> dict[str, str]:
    """The first definition list under `element`, as label: shown text."""
    (dl, *_) = element.find_all("dl", "facts")
    labels = [" ".join(dt.text().split()) for dt in dl.find_all("dt")]
    values = [" ".join(dd.text().split()) for dd in dl.find_all("dd")]
    return dict(zip(labels, values, strict=True))


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def png_idat(png: bytes) -> bytes:
    """The decompressed image data of a PNG (still filtered, one filter byte a row)."""
    data, at = b"", 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        if png[at + 4 : at + 8] == b"IDAT":
            data += png[at + 8 : at + 8 + length]
        at += 12 + length
    return zlib.decompress(data)


def rgb(fill: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", fill)
    assert match, fill
    r, g, b = (int(v) for v in match.groups())
    return r, g, b


def test_header_shows_verdict_config_environments_and_inputs(
    page: str, report: ParityReport
) -> None:
    root = parse(page)
    (header,) = root.find_all("header")
    (badge,) = header.find_all("span", "verdict")
    assert badge.text() == "FAIL"
    assert root.find_all("body")[0].classes == {"fail"}
    assert facts(header) == {
        "config": "examples/parity.toml",
        "environments": "infer (candidate) against train (reference)",
        "inputs": f"8 samples, seed 7, digest {report.inputs['digest']}",
        "calibrated": "yes: each environment ran twice, outputs carry their noise",
        "took": "42.0 s",
    }
    assert [li.text() for li in header.find_all("li")] == report.reasons
    (table,) = root.find_all("table", "environments")
    rows = [[td.text() for td in tr.find_all("td")] for tr in table.find_all("tr")[1:]]
    assert rows[0] == [
        "train (reference)",
        "venv",
        "venv from locks/train.lock",
        "3.11.9",
        "Linux-x86_64",
        "locks/train.locksha256:" + "ab" * 32,
        "1",
    ]
    assert rows[1][0] == "infer (candidate)"
    assert rows[1][2] == IMG  # the description, shown as text
    assert rows[1][-1] == "2"  # packages


def test_every_output_has_a_section_with_its_numbers(page: str, report: ParityReport) -> None:
    by_name = sections(parse(page))
    assert list(by_name) == ["depth", "mask", "label", "score"]
    for o in report.outputs:
        section = by_name[o.name]
        assert ("pass" if o.passed else "fail") in section.classes
        (heading,) = section.find_all("h3")
        assert o.policy_description in heading.text()
        shown = facts(section)
        assert shown["mismatched"].startswith(f"{o.mismatched} of {o.total} {o.unit} (")
        if o.policy == "decision":  # it judges classes, not |a - b|: no worst element
            assert "worst element" not in shown
        if o.policy != "allclose":  # advice in the policy's own terms, or none (exact)
            assert "atol to pass" not in shown and "rtol to pass" not in shown
            assert shown.get("would pass") == (None if o.policy == "exact" else would_pass(o))
        else:
            assert shown["atol to pass"] == f"{o.atol_to_pass:.4g}"
            assert shown["rtol to pass"] == (
                f"{o.rtol_to_pass:.4g}" if np.isfinite(o.rtol_to_pass) else "inf"
            )
        if o.reason:
            (reason,) = section.find_all("p", "reason")
            assert reason.text() == o.reason
        else:
            assert not section.find_all("p", "reason")
        if o.policy == "decision":  # classes, not the size of |a - b|: no statistics of it
            assert not section.find_all("table", "stats")
            assert not section.find_all("svg", "histogram")
            continue
        stats = section.find_all("table", "stats")[0].find_all("td")
        assert [td.text() for td in stats][:4] == [
            f"{v:.4g}" if np.isfinite(v) else "inf"
            for v in (o.max_abs_diff, o.mean_abs_diff, o.median_abs_diff, o.p99_abs_diff)
        ]
    depth, _, label, _ = report.outputs
    shown = facts(by_name["depth"])
    assert depth.cause == "nan_inf" and shown["result"] == "failed (cause: nan_inf)"
    assert depth.worst_index == (1, 30, 60)
    assert (
        shown["worst element"] == f"[1, 30, 60]: {depth.worst_reference:.6g} (train) vs inf (infer)"
    )
    assert facts(by_name["mask"])["result"] == "failed (cause: tolerance)"
    shown = facts(by_name["label"])
    assert shown["result"] == "passed"
    assert shown["mismatched"] == "1 of 16 rows (6.25%)"
    assert shown["agreement"] == "0.9375" == f"{label.agreement:.6g}"
    assert shown["would pass"] == "min_agreement ≤ 0.9375"
    (row,) = label.disagreements
    assert shown["first rows that disagree"] == (
        f"disagrees at [{row.index[0]}]: {row.reference[0]} (train) vs {row.candidate[0]} (infer)"
    )
    assert (
        facts(by_name["score"])["nondeterministic"] == "yes: an environment disagrees with itself"
    )
    noise = by_name["score"].find_all("table", "noise")[0]
    assert [[td.text() for td in tr.find_all("td")] for tr in noise.find_all("tr")[1:]] == [
        ["train", "0", "0 of 16"],
        ["infer", "2e-07", "2 of 16"],
    ]
    assert not by_name["depth"].find_all("table", "noise")


def test_histogram_has_one_bar_per_bin_on_a_log_axis(page: str, report: ParityReport) -> None:
    by_name = sections(parse(page))
    for o in report.outputs:
        assert o.histogram is not None
        if o.policy == "decision":
            continue  # no histogram of |a - b| for class ids (see above)
        (svg,) = by_name[o.name].find_all("svg", "histogram")
        assert len(svg.find_all("rect", "bin")) == len(o.histogram.bins)
        assert len(svg.find_all("rect", "zero")) == (1 if o.histogram.zero else 0)
        assert len(svg.find_all("rect", "inf")) == (1 if o.histogram.inf else 0)
        labels = " ".join(t.text() for t in svg.find_all("text"))
        assert "power-of-two ranges" in labels and "(log scale)" in labels
    depth = report.outputs[0].histogram
    assert depth is not None and depth.inf == 1 and len(depth.bins) > 5
    (svg,) = by_name["depth"].find_all("svg", "histogram")
    bars = svg.find_all("rect", "bar")
    counts = [depth.zero, *(c for _, _, c in depth.bins), depth.inf]
    heights = [float(b.attrs["height"]) for b in bars]
    # A taller bar always means a larger count, and a count of one still shows.
    ordered = sorted(zip(counts, heights, strict=True))
    assert all(h1 <= h2 for (_, h1), (_, h2) in itertools.pairwise(ordered))
    assert heights[-1] > 0  # the single inf
    assert [b.find_all("title")[0].text() for b in bars][-1].endswith(": 1 elements")


def test_heatmap_is_drawn_for_image_outputs_only(page: str, report: ParityReport) -> None:
    by_name = sections(parse(page))
    # (16, 10) logits and a 1-D score are not images: no heatmap, no pictures
    for name, o in (("label", report.outputs[2]), ("score", report.outputs[3])):
        assert o.heatmap is None and o.pictures is None
        assert not by_name[name].find_all("img") and not by_name[name].find_all("figure", "heatmap")
    for o in report.outputs[:2]:
        assert o.heatmap is not None
        (img,) = by_name[o.name].find_all("img", "heatmap")
        prefix = "data:image/png;base64,"
        assert img.attrs["src"].startswith(prefix)
        png = base64.b64decode(img.attrs["src"][len(prefix) :])
        rows, cols = len(o.heatmap.values), len(o.heatmap.values[0])
        assert png_size(png) == (cols, rows)
        (figure,) = by_name[o.name].find_all("figure", "heatmap")
        caption = " ".join(figure.find_all("figcaption")[0].text().split())
        x = "\N{MULTIPLICATION SIGN}"
        grid = f"{rows} {x} {cols} grid covering the {o.heatmap.height} {x} {o.heatmap.width}"
        assert grid in caption
    depth = report.outputs[0]
    assert depth.heatmap is not None
    (img,) = by_name["depth"].find_all("img", "heatmap")
    pixels = png_idat(base64.b64decode(img.attrs["src"].split(",", 1)[1]))
    width = len(depth.heatmap.values[0])

    def pixel(r: int, c: int) -> tuple[int, int, int]:
        at = r * (1 + 3 * width) + 1 + 3 * c
        red, green, blue = pixels[at : at + 3]
        return red, green, blue

    (legend,) = by_name["depth"].find_all("figure", "heatmap")[0].find_all("svg", "legend")
    (swatch,) = legend.find_all("rect", "inf-swatch")
    scale = [rgb(r.attrs["fill"]) for r in legend.find_all("rect") if r is not swatch]
    assert len(scale) > 10 and scale[0] != scale[-1]
    inf_cells = [
        (r, c) for r, row in enumerate(depth.heatmap.values) for c, v in enumerate(row) if v > 1e9
    ]
    assert len(inf_cells) == 1
    assert pixel(*inf_cells[0]) == rgb(swatch.attrs["fill"])
    assert rgb(swatch.attrs["fill"]) not in scale  # inf stands out from every finite colour
    # Outside the drifted region the cells hold float noise only: near the scale's 0 end.
    assert pixel(0, 0) == scale[0]
    assert pixel(20, 40) != scale[0]  # inside the region (rows 20..40, cols 50..80 of 96)
    labels = [t.text() for t in legend.find_all("text")]
    finite_max = max(v for row in depth.heatmap.values for v in row if v < 1e9)
    assert labels == ["0", f"{finite_max:.4g}", "inf"]


def test_version_differences_table_highlights_failing_rows(page: str) -> None:
    (table,) = parse(page).find_all("table", "version-diffs")
    header = [th.text() for th in table.find_all("th")]
    assert header == ["name", "train", "infer", "severity", "expected", "counts", "note"]
    rows = table.find_all("tr")[1:]
    cells = [[td.text() for td in tr.find_all("td")] for tr in rows]
    assert cells[0] == ["numpy", "2.4.6", "1.26.4", "numerics", "no", "fails", cells[0][-1]]
    assert cells[1][:3] == [SCRIPT, IMG, "-"]
    assert ["fails" in tr.classes for tr in rows] == [True, False]


def test_page_is_self_contained_and_well_formed(page: str) -> None:
    parse(page)  # balanced
    lowered = page.lower()
    for remote in ("http://", "https://", 'src="//', "href=", "url(", "@import", "<link"):
        assert remote not in lowered, remote
    assert "<script" not in lowered
    assert "default-src 'none'" in page  # nothing runs or loads even if escaping failed


@pytest.mark.parametrize("make", [failing_report, error_report], ids=["package", "error"])
def test_hostile_strings_are_escaped(make: Callable[[], ParityReport]) -> None:
    parity_report = make()
    text = render_html(parity_report)
    text.encode("utf-8")  # a lone surrogate from undecodable output must not break writing
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert escape(SCRIPT) in text and escape(IMG) in text
    root = parse(text)
    assert not root.find_all("script")
    assert all(img.attrs["src"].startswith("data:image/png") for img in root.find_all("img"))
    if parity_report.errors:
        (pre,) = root.find_all("pre")
        assert pre.text().endswith(f"{SCRIPT}\n{IMG}\\x1b[0m\\udcff")
        assert parse(text).find_all("span", "verdict")[0].text() == "ERROR"


def test_check_writes_the_page_with_html(
    report: ParityReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check itself is replaced: this tests the option's wiring, not the environments.
    monkeypatch.setattr("parity.cli.load_config", lambda path: path)
    monkeypatch.setattr("parity.cli.run_check", lambda config, **kwargs: report)
    target = tmp_path / "out" / "parity.render.html"
    result = CliRunner().invoke(parity_main, ["check", "-q", "--html", str(target)])
    assert result.exit_code == 1, result.output
    assert target.read_text(encoding="utf-8") == render_html(report)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("PARITY_REQUIRE_CHROMIUM") == "1":
        pytest.fail("PARITY_REQUIRE_CHROMIUM=1 but no chromium executable is on PATH")
    pytest.skip("no chromium executable on PATH (set PARITY_REQUIRE_CHROMIUM=1 to require it)")


def headless(chromium: str, page: Path, tmp: Path) -> tuple[bytes, str, str]:
    """The screenshot, the rendered DOM and the log of one headless Chromium load."""
    shot = tmp / "page.png"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            "--dump-dom",
            "--enable-logging=stderr",
            "--v=0",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return shot.read_bytes(), done.stdout, done.stderr


@pytest.mark.parametrize("make", [failing_report, error_report], ids=["fail", "error"])
def test_chromium_renders_the_page_and_runs_nothing(
    make: Callable[[], ParityReport], tmp_path: Path
) -> None:
    chromium = find_chromium()
    parity_report = make()
    path = tmp_path / "report.html"
    path.write_text(render_html(parity_report), encoding="utf-8")
    png, dom, log = headless(chromium, path, tmp_path)

    assert png_size(png) == (1280, 2000)
    # Not one flat colour: a blank page's image data holds a handful of byte values.
    assert len(set(png_idat(png))) > 64
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console  # no script errors, no blocked loads
    rendered = parse(dom.replace("<!DOCTYPE html>", ""))
    assert not rendered.find_all("script")
    assert "data-pwned" not in rendered.find_all("body")[0].attrs
    assert [s.attrs["id"] for s in rendered.find_all("section", "output")] == [
        f"output-{i}" for i in range(len(parity_report.outputs))
    ]
    assert list(sections(rendered)) == [o.name for o in parity_report.outputs]
    if parity_report.outputs:
        assert len(rendered.find_all("img", "heatmap")) == 2
        assert len(rendered.find_all("figure", "pictures")) == 2
