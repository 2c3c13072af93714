"""The report as one self-contained HTML page: inline CSS and SVG, PNG data URIs, no JS.

Pictures go where a person would rather look than read: an image-like output gets a
heatmap of where it differs and, side by side, its worst sample as each environment
computed it and their difference (so are the localized stages beyond tolerance); a 2-D
output (logits, tabular rows) gets a per-column view instead.

Worker messages, package names and output names come from the environments, so every
string from the report is escaped, and a Content-Security-Policy that allows no script
and no remote resource guards the page should one ever slip through. Like every
renderer, this one formats the report's numbers and computes none of them.
"""

from __future__ import annotations

import base64
import html
import math
import re
import struct
import zlib
from typing import TYPE_CHECKING

from parity.comparison import COLUMN_LIMIT, describe_disagreements
from parity.inputs.seeded import describe_label
from parity.policies import advises_tolerances, reads_difference, would_pass
from parity.report import ParityReport

if TYPE_CHECKING:
    from parity.comparison import Columns, Heatmap, Histogram, OutputComparison, Pictures
    from parity.investigations.localize import Localization

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_VERDICT = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
# Characters HTML forbids in text (C0/C1 controls, lone surrogates, noncharacters); a
# lone surrogate from undecodable worker output could not even be written as UTF-8.
_NOT_HTML_CHAR = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
# Heatmap colour scale, from no difference to the largest finite one (ColorBrewer OrRd).
_SCALE = ((255, 247, 236), (253, 212, 158), (252, 141, 89), (215, 48, 31), (127, 0, 0))
_INF_RGB = (33, 102, 172)
_HEATMAP_PX = 288  # the longer side of a drawn heatmap
_PICTURE_PX = 192  # the longer side of a drawn picture (each is at most 128 pixels)

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 28px 0 8px; }
h3 { font-size: 16px; margin: 0 0 6px; display: flex; gap: 10px; align-items: baseline; }
h4 { font-size: 13px; margin: 12px 0 4px; color: #59636e; }
code, pre, .num { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
pre { white-space: pre-wrap; word-break: break-word; background: #fff1f0; padding: 8px 10px;
  border-radius: 4px; margin: 6px 0; }
header { background: #fff; border-top: 8px solid var(--verdict);
  box-shadow: 0 1px 3px rgba(0, 0, 0, .08); }
header > div { max-width: 1180px; margin: 0 auto; padding: 14px 24px; }
.pass { --verdict: #1a7f37; }
.fail { --verdict: #cf222e; }
.error { --verdict: #bc4c00; }
.badge { color: #fff; background: var(--verdict); padding: 1px 9px; border-radius: 4px;
  font-weight: 700; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: #59636e; }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; background: #fff; margin: 4px 0; }
th, td { border: 1px solid #d1d9e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eff2f5; font-weight: 600; }
td.num { text-align: right; }
tr.fails td { background: #ffebe9; }
tr.derived td { color: #57606a; }
table.environments { width: 100%; }
code.digest { word-break: break-all; font-size: 12px; }
section.output { background: #fff; border: 1px solid #d1d9e0; border-left: 6px solid
  var(--verdict); border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
.cols { display: flex; flex-wrap: wrap; gap: 12px 32px; align-items: flex-start; }
.reason { color: #8c1d18; margin: 4px 0 8px; }
figure { margin: 0; }
figcaption { color: #59636e; font-size: 12px; max-width: 560px; }
img.heatmap { image-rendering: pixelated; border: 1px solid #d1d9e0; display: block; }
figure.pictures, figure.columns { margin: 12px 0; }
figure.pictures .row { display: flex; flex-wrap: wrap; gap: 12px; }
figure.pictures .row > div { display: flex; flex-direction: column; gap: 2px; }
figure.pictures img { image-rendering: pixelated; border: 1px solid #d1d9e0; }
table.columns td.bar { min-width: 120px; }
table.columns td.bar span { display: block; height: 10px; background: #cf6a3a; }
svg text { font: 11px system-ui, sans-serif; fill: #1f2328; }
svg .axis { stroke: #59636e; stroke-width: 1; }
svg .grid { stroke: #d1d9e0; stroke-width: 1; }
svg .bin { fill: #cf6a3a; }
svg .zero { fill: #8c959f; }
svg .inf { fill: #2166ac; }
.muted { color: #59636e; }
"""


def render_html(report: ParityReport) -> str:
    """One HTML page for `report`: verdict, environments, each output with its histogram
    and heatmap, and the version differences."""
    word = _VERDICT[report.verdict]
    title = f"Parity check: {word} ({report.config})"
    body = [
        _header(report),
        "<main>",
        _environments(report),
        f"<h2>Outputs ({_e(report.candidate)} against {_e(report.reference)})</h2>",
        *(_output(i, o, report) for i, o in enumerate(report.outputs)),
        "" if report.outputs else '<p class="muted">No outputs were compared.</p>',
        _localization(report, report.localization) if report.localization else "",
        _version_diffs(report),
        _warnings(report) if report.warnings or report.warnings_dropped else "",
        "</main>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f'<body class="{report.verdict}">\n' + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(value: object) -> str:
    """`value` as HTML text: escaped, with characters HTML forbids shown as `\\x1b`."""
    text = _NOT_HTML_CHAR.sub(_visible, str(value))
    return html.escape(text, quote=True)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _num(value: float | None, spec: str = ".4g") -> str:
    """A number as shown (`inf`, `nan` spelled out; `-` where the report has none)."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _facts(rows: list[tuple[str, str]]) -> str:
    """A definition list of (label, HTML) pairs; labels are our own words."""
    items = "".join(f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl class="facts">{items}</dl>'


def _header(report: ParityReport) -> str:
    inputs = report.inputs
    total = report.seconds.get("total")
    rows = [
        ("config", f"<code>{_e(report.config)}</code>"),
        (
            "environments",
            f"<b>{_e(report.candidate)}</b> (candidate) against "
            f"<b>{_e(report.reference)}</b> (reference)",
        ),
        (
            "inputs",
            f"{_e(describe_label(inputs))}, digest <code>{_e(inputs.get('digest', '-'))}</code>",
        ),
        (
            "calibrated",
            "yes: each environment ran twice, outputs carry their noise"
            if report.calibrated
            else "no",
        ),
    ]
    if report.against is not None:
        a = report.against
        rows.insert(
            2,
            (
                "against",
                f"golden bundle <code>{_e(a.path)}</code>, recorded in {_e(a.environment)} "
                f"on {_e(a.created)}, manifest <code>{_e(a.manifest_digest)}</code>",
            ),
        )
    if total is not None:
        rows.append(("took", f"{_num(total, '.1f')} s"))
    parts = [
        "<header><div>",
        f'<h1>Parity check: <span class="badge verdict">{_VERDICT[report.verdict]}</span></h1>',
        _facts(rows),
    ]
    if report.errors:
        parts.append('<h4>Errors</h4><div class="errors">')
        parts += [f"<pre>{_e(message)}</pre>" for message in report.errors]
        parts.append("</div>")
    if report.reasons:
        items = "".join(f"<li>{_e(reason)}</li>" for reason in report.reasons)
        parts.append(f'<h4>Why</h4><ul class="reasons">{items}</ul>')
    parts.append("</div></header>")
    return "\n".join(parts)


def _environments(report: ParityReport) -> str:
    if not report.environments:
        return '<h2>Environments</h2><p class="muted">No environment is described.</p>'
    roles = {report.reference: "reference", report.candidate: "candidate"}
    rows = []
    for env in report.environments.values():
        role = roles.get(env.name)
        lock = _e(env.lock or "-")
        if env.lock_digest:
            lock += f'<br><code class="muted digest">{_e(env.lock_digest)}</code>'
        cells = [
            f"<b>{_e(env.name)}</b>" + (f' <span class="muted">({role})</span>' if role else ""),
            _e(env.backend),
            _e(env.description),
            _e(env.python or "-"),
            _e(env.platform or "-"),
            lock,
        ]
        row = "".join(f"<td>{c}</td>" for c in cells)
        count = str(len(env.packages)) if env.fingerprinted else "unknown"
        if env.fingerprinted and env.versions_from == "lock":
            count += '<br><span class="muted">from the lock, not observed</span>'
        rows.append(f'<tr>{row}<td class="num">{count}</td></tr>')
    head = "".join(
        f"<th>{h}</th>"
        for h in ("name", "backend", "description", "python", "platform", "lock", "packages")
    )
    return (
        '<h2>Environments</h2><table class="environments">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _output(index: int, o: OutputComparison, report: ParityReport) -> str:
    state = "pass" if o.passed else "fail"
    parts = [
        f'<section class="output {state}" id="output-{index}">',
        f'<h3><code class="name">{_e(o.name)}</code>'
        f'<span class="badge">{"passed" if o.passed else "failed"}</span>'
        f'<span class="muted">{_e(o.policy_description)}</span></h3>',
    ]
    if o.reason:
        parts.append(f'<p class="reason">{_e(o.reason)}</p>')
    parts.append('<div class="cols"><div>')
    parts.append(_facts(_output_facts(o, report)))
    # |a - b| means nothing for a rule that decides on classes (decision): no statistics
    # or histogram of it, only the rows that disagree (in the facts)
    differences = reads_difference(o)
    if differences:
        parts.append(_stats(o))
    if o.noise:
        parts.append(_noise(o))
    parts.append("</div><div>")
    if o.histogram is not None and differences:
        parts.append(_histogram(o.histogram))
    elif differences:
        parts.append('<p class="muted">No histogram for this output.</p>')
    else:
        parts.append(
            f'<p class="muted">No |a &minus; b| statistics: {_e(o.policy)} judges the '
            "classes the rows choose, not the size of their difference.</p>"
        )
    if o.heatmap is not None:
        parts.append(_heatmap(o.heatmap))
    parts.append(_column_view(o))
    parts.append("</div></div>")
    if o.pictures is not None:
        parts.append(_pictures(o.name, o.pictures, report))
    parts.append("</section>")
    return "\n".join(parts)


def _output_facts(o: OutputComparison, report: ParityReport) -> list[tuple[str, str]]:
    rows = [
        ("result", "passed" if o.passed else f"failed (cause: {_e(o.cause or '-')})"),
        (
            "reference",
            f"<code>{_e(o.reference_dtype)}{_e(list(o.reference_shape))}</code> "
            f"({_e(report.reference)})",
        ),
        (
            "candidate",
            f"<code>{_e(o.candidate_dtype)}{_e(list(o.candidate_shape))}</code> "
            f"({_e(report.candidate)})",
        ),
        (
            "mismatched",
            f"{o.mismatched} of {o.total} {_e(o.unit)} "
            f"({_num(o.mismatched_fraction * 100, '.4g')}%)",
        ),
    ]
    if o.nan_mismatched:
        rows.append(("NaN mismatched", str(o.nan_mismatched)))
    if advises_tolerances(o):  # allclose: the atol and rtol that would pass
        rows += [
            ("atol to pass", f'<span class="num">{_num(o.atol_to_pass)}</span>'),
            ("rtol to pass", f'<span class="num">{_num(o.rtol_to_pass)}</span>'),
        ]
    elif (advice := would_pass(o)) is not None and o.max_abs_diff != 0:  # in its own terms
        rows.append(("would pass", _e(advice)))
    if not reads_difference(o):  # decision: the rows that disagree, not the worst element
        lines = describe_disagreements(o, report.reference, report.candidate)
        if lines:
            rows.append(("first rows that disagree", "<br>".join(_e(line) for line in lines)))
    else:
        if o.worst_index is not None:
            rows.append(
                (
                    "worst element",
                    f"<code>{_e(list(o.worst_index))}</code>: "
                    f'<span class="num">{_num(o.worst_reference, ".6g")}</span> '
                    f"({_e(report.reference)}) vs "
                    f'<span class="num">{_num(o.worst_candidate, ".6g")}</span> '
                    f"({_e(report.candidate)})",
                )
            )
    if o.max_ulp_diff is not None:
        rows.append(("max ULP diff", str(o.max_ulp_diff)))
    if o.agreement is not None:
        rows.append(("agreement", _num(o.agreement, ".6g")))
    if o.psnr_db is not None:
        rows.append(("PSNR", f"{_num(o.psnr_db)} dB"))
    if o.noise or o.nondeterministic:
        rows.append(
            (
                "nondeterministic",
                "yes: an environment disagrees with itself" if o.nondeterministic else "no",
            )
        )
    return rows


def _stats(o: OutputComparison) -> str:
    absolute = (o.max_abs_diff, o.mean_abs_diff, o.median_abs_diff, o.p99_abs_diff)
    relative = (o.max_rel_diff, o.mean_rel_diff, o.median_rel_diff, o.p99_rel_diff)
    rows = [("|a &minus; b|", absolute), ("|a &minus; b| / |b|", relative)]
    body = "".join(
        f"<tr><th>{label}</th>"
        + "".join(f'<td class="num">{_num(v)}</td>' for v in values)
        + "</tr>"
        for label, values in rows
    )
    return (
        '<table class="stats"><thead><tr><th>difference</th><th>max</th><th>mean</th>'
        f"<th>median</th><th>p99</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _noise(o: OutputComparison) -> str:
    rows = "".join(
        f"<tr><td>{_e(env)}</td><td class='num'>{_num(n.max_abs_diff)}</td>"
        f"<td class='num'>{n.mismatched} of {n.total}</td></tr>"
        for env, n in o.noise.items()
    )
    return (
        "<h4>Noise: each environment against a second run of itself</h4>"
        '<table class="noise"><thead><tr><th>environment</th><th>max |a &minus; b|</th>'
        f"<th>not bitwise identical</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _histogram(h: Histogram) -> str:
    """Inline SVG bars: one for no difference, one per power-of-two range, one for inf;
    the count axis is logarithmic so a handful of outliers stay visible."""
    bars: list[tuple[str, str, int, str]] = []  # (class, label, count, tooltip)
    if h.zero:
        bars.append(("zero", "0", h.zero, f"no difference: {h.zero}"))
    for low, high, count in h.bins:
        bars.append(("bin", _power(low), count, f"[{low:.4g}, {high:.4g}): {count}"))
    if h.inf:
        bars.append(("inf", "inf", h.inf, f"infinite (NaN or inf on one side): {h.inf}"))
    if not bars:
        return '<p class="muted">No differences to draw.</p>'
    width, height, left, bottom, top, right = 560, 250, 64, 56, 10, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    decades = max(1, math.ceil(math.log10(max(c for _, _, c, _ in bars))))
    floor = -0.3  # the axis starts just under a count of 1, so 1 still draws a bar

    def y(count: float) -> float:
        return top + plot_h * (1 - (math.log10(count) - floor) / (decades - floor))

    slot = plot_w / len(bars)
    label_every = max(1, math.ceil(len(bars) / 12))
    parts = [
        f'<svg class="histogram" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram of absolute differences">'
    ]
    for k in range(decades + 1):
        ty = y(10**k)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{_count(10**k)}</text>'
        )
    for i, (kind, label, count, tip) in enumerate(bars):
        x = left + i * slot
        bar_y = y(count) if count else top + plot_h
        parts.append(
            f'<rect class="bar {kind}" x="{x + 0.5:.1f}" y="{bar_y:.1f}" '
            f'width="{max(slot - 1, 0.5):.1f}" height="{top + plot_h - bar_y:.1f}">'
            f"<title>{_e(tip)} elements</title></rect>"
        )
        if kind != "bin" or i % label_every == 0 or i == len(bars) - 1:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 14}" '
                f'text-anchor="middle">{_e(label)}</text>'
            )
    parts += [
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
        f'y2="{top + plot_h}"/>',
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>',
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 14}" text-anchor="middle">'
        "|a &minus; b| in power-of-two ranges [2ᵏ, 2ᵏ⁺¹)</text>",
        f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">elements (log scale)</text>',
        "</svg>",
    ]
    return (
        '<figure class="histogram">' + "".join(parts) + "<figcaption>How many "
        "elements differ by how much: 0 for none, inf where NaN or an infinity sits on one "
        "side only. Hover a bar for its range and count.</figcaption></figure>"
    )


def _power(low: float) -> str:
    """`2⁻²⁰` for the range that starts at 2**-20."""
    exponent = math.frexp(low)[1] - 1
    return "2" + str(exponent).translate(_SUPERSCRIPT)


def _count(value: int) -> str:
    return str(value) if value < 10**4 else f"1e{len(str(value)) - 1}"


def _heatmap(heat: Heatmap) -> str:
    """The heatmap as a PNG data URI (one pixel per cell, drawn enlarged) with its scale."""
    rows, cols = len(heat.values), len(heat.values[0]) if heat.values else 0
    if not rows or not cols:
        return ""
    finite = [v for row in heat.values for v in row if math.isfinite(v)]
    scale_top = max(finite, default=0.0)
    has_inf = len(finite) < rows * cols
    cell = max(1, _HEATMAP_PX // max(rows, cols))
    png = _png([b"".join(bytes(_colour(v, scale_top)) for v in row) for row in heat.values], cols)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    # Only integers go into the caption, so it is HTML as written.
    caption = (
        f"Largest |a &minus; b| in each cell of a {rows} &times; {cols} grid covering the "
        f"{heat.height} &times; {heat.width} (height &times; width) of the image, taken "
        "over all samples and channels."
    )
    return (
        '<figure class="heatmap"><h4>Where it differs</h4>'
        f'<img class="heatmap" width="{cols * cell}" height="{rows * cell}" '
        f'alt="{caption}" src="{uri}">{_legend(scale_top, has_inf)}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _legend(scale_top: float, has_inf: bool) -> str:
    """The colour scale from 0 to the largest finite cell, and the inf colour if used."""
    steps, step_w, bar_h = 64, 4, 12
    width = steps * step_w + (90 if has_inf else 0) + 20
    parts = [
        f'<svg class="legend" width="{width}" height="36" '
        f'viewBox="0 0 {width} 36" role="img" aria-label="colour scale">'
    ]
    for i in range(steps):
        r, g, b = _colour(scale_top * i / (steps - 1), scale_top)
        parts.append(
            f'<rect x="{i * step_w}" y="2" width="{step_w}" height="{bar_h}" '
            f'fill="rgb({r},{g},{b})"/>'
        )
    parts += [
        f'<text x="0" y="28">0</text><text x="{steps * step_w}" y="28" text-anchor="end">'
        f"{_num(scale_top)}</text>"
    ]
    if has_inf:
        x = steps * step_w + 20
        r, g, b = _INF_RGB
        parts.append(
            f'<rect class="inf-swatch" x="{x}" y="2" width="{bar_h}" height="{bar_h}" '
            f'fill="rgb({r},{g},{b})"/><text x="{x + bar_h + 4}" y="12">inf</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pictures(name: str, p: Pictures, report: ParityReport) -> str:
    """One sample of an image-like value side by side: the reference's image, the
    candidate's (one shared scale) and |a - b| per pixel on the heatmap's colour scale."""
    cell = max(1, _PICTURE_PX // max(p.rows, p.columns))
    size = f'width="{p.columns * cell}" height="{p.rows * cell}"'
    stride = p.columns * (3 if p.colour else 1)
    images = []
    for label, role, pixels in (
        (report.reference, "reference", p.reference),
        (report.candidate, "candidate", p.candidate),
    ):
        rows = [pixels[r * stride : (r + 1) * stride] for r in range(p.rows)]
        uri = _uri(_png(rows, p.columns, grey=not p.colour))
        images.append(
            f'<div><img class="picture" {size} alt="{_e(label)}" src="{uri}">'
            f'<span class="muted">{_e(label)} ({role})</span></div>'
        )
    finite = [v for row in p.difference for v in row if math.isfinite(v)]
    scale_top = max(finite, default=0.0)
    has_inf = len(finite) < p.rows * p.columns
    diff_png = _png(
        [b"".join(bytes(_colour(v, scale_top)) for v in row) for row in p.difference], p.columns
    )
    images.append(
        f'<div><img class="picture" {size} alt="difference" src="{_uri(diff_png)}">'
        f'<span class="muted">|a &minus; b|</span>{_legend(scale_top, has_inf)}</div>'
    )
    drawn = {
        "grey": "in grey",
        "rgb": "in colour (RGB)",
        "rgba": "in colour (RGB; the alpha channel is not drawn, its difference is)",
    }.get(
        p.layout,
        f"channel {p.channel} of its {p.channels} (a feature map: the channel "
        "where the two environments differ most), in grey",
    )
    # Only numbers and our own words go into the caption, escaped all the same.
    words = [
        f"Sample {p.sample}, the {p.height} &times; {p.width} value {drawn}, as "
        f"{_e(report.reference)} and {_e(report.candidate)} computed it. Both images share "
        f"one scale, {'each channel' if p.colour else 'black'} at "
        f"{_e(_num(p.low, '.6g'))} and {'full' if p.colour else 'white'} at "
        f"{_e(_num(p.high, '.6g'))}, so a shift in brightness shows. The third is "
        "|a &minus; b| per pixel"
        + (", the largest over its channels" if p.colour else "")
        + f", on the heatmap's colour scale from 0 to {_e(_num(scale_top))}"
        + (" (inf where NaN or an infinity sits on one side only)." if has_inf else "."),
    ]
    if p.downsampled:
        words.append(
            f"Downsampled from {p.height} &times; {p.width} to {p.rows} &times; {p.columns}: "
            "each pixel is the mean of its block, the difference the largest in its block."
        )
    if p.nonfinite:
        words.append(
            f"{p.nonfinite} NaN or infinite values are drawn at the scale's ends "
            "(NaN and -inf as the low end)."
        )
    return (
        f'<figure class="pictures" data-value="{_e(name)}">'
        f"<h4>Sample {p.sample} side by side: <code>{_e(name)}</code></h4>"
        f'<div class="row">{"".join(images)}</div>'
        f"<figcaption>{' '.join(words)}</figcaption></figure>"
    )


def _column_view(o: OutputComparison) -> str:
    """A 2-D output column by column: each column's largest |a - b| and mismatched count."""
    shape = o.reference_shape
    if o.columns is None:
        if len(shape) == 2 and shape == o.candidate_shape and shape[1] > COLUMN_LIMIT:
            return (
                f'<p class="muted">No per-column view: {shape[1]} columns, more than '
                f"{COLUMN_LIMIT}.</p>"
            )
        return ""
    c: Columns = o.columns
    if not any(c.mismatched) and not any(c.max_abs_diff):
        return ""
    counted = "mismatched" if o.unit == "elements" else "elements that differ"
    finite = [v for v in c.max_abs_diff if math.isfinite(v)]
    top = max(finite, default=0.0)
    rows = []
    for i, (worst, count) in enumerate(zip(c.max_abs_diff, c.mismatched, strict=True)):
        if not math.isfinite(worst):
            bar = f'<span style="width:100%;background:rgb{_INF_RGB}"></span>'
        else:
            bar = f'<span style="width:{100 * worst / top if top else 0:.1f}%"></span>'
        cls = ' class="fails"' if count else ""
        rows.append(
            f'<tr{cls}><td class="num">{i}</td><td class="num">{_num(worst)}</td>'
            f'<td class="num">{count} of {shape[0]}</td><td class="bar">{bar}</td></tr>'
        )
    return (
        f'<figure class="columns" data-value="{_e(o.name)}"><h4>Column by column</h4>'
        '<table class="columns"><thead><tr><th>column</th><th>max |a &minus; b|</th>'
        f"<th>{counted}</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<figcaption>Each of the {shape[1]} columns over all {shape[0]} rows: the "
        "largest |a &minus; b| (the bar, against the largest column's; blue for inf) and "
        f"how many of its elements are {counted}.</figcaption></figure>"
    )


def _colour(value: float, scale_top: float) -> tuple[int, int, int]:
    """The colour of one cell: linear along `_SCALE` from 0 to `scale_top`."""
    if not math.isfinite(value):
        return _INF_RGB
    t = min(max(value / scale_top, 0.0), 1.0) if scale_top > 0 else 0.0
    at = t * (len(_SCALE) - 1)
    i = min(int(at), len(_SCALE) - 2)
    f = at - i
    lo, hi = _SCALE[i], _SCALE[i + 1]
    return (
        round(lo[0] + (hi[0] - lo[0]) * f),
        round(lo[1] + (hi[1] - lo[1]) * f),
        round(lo[2] + (hi[2] - lo[2]) * f),
    )


def _png(rows: list[bytes], width: int, grey: bool = False) -> bytes:
    """An 8-bit RGB (or grey) PNG of `rows` (each `width` pixels), unfiltered."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 0 if grey else 2, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _localization(report: ParityReport, loc: Localization) -> str:
    """The localization: its summary, then a table of every captured value in order."""
    heading = "Localization"
    if loc.sample is not None:
        heading += f" (sample {loc.sample}, the worst of output <code>{_e(loc.output)}</code>)"
    parts = [
        f"<h2>{heading}</h2>",
        f'<p class="{"reason" if loc.error else "summary"}">{_e(loc.summary)}</p>',
    ]
    if not loc.entries:
        return "\n".join(parts)
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "value",
            "stage",
            "module",
            "result",
            "max abs diff",
            _e(report.reference),
            _e(report.candidate),
        )
    )
    rows = []
    for e in loc.entries:
        sides = "".join(
            f"<td><code>{_e(dtype)} {_e('x'.join(map(str, shape or ())) or 'scalar')}</code></td>"
            if dtype is not None
            else '<td class="muted">absent</td>'
            for dtype, shape in (
                (e.reference_dtype, e.reference_shape),
                (e.candidate_dtype, e.candidate_shape),
            )
        )
        result = "pass" if e.passed else f"<b>beyond</b> ({_e(e.cause)})"
        cls = "" if e.passed else ' class="fails"'
        rows.append(
            f"<tr{cls}><td><code>{_e(e.name)}</code></td><td>{_e(e.stage)}</td>"
            f"<td>{_e(e.module_class or '-')}</td><td>{result}</td>"
            f'<td class="num">{_num(e.max_abs_diff)}</td>{sides}</tr>'
        )
    parts.append(
        '<table class="localization">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    parts += [_pictures(e.name, e.pictures, report) for e in loc.entries if e.pictures]
    return "\n".join(parts)


def _version_diffs(report: ParityReport) -> str:
    if not report.versions_known:
        why = _e(report.versions_unknown_why)
        return f'<h2>Version differences</h2><p class="muted">Unknown ({why}).</p>'
    if not report.version_diffs:
        return '<h2>Version differences</h2><p class="muted">None.</p>'
    names = list(
        dict.fromkeys(
            [*report.environments, *(n for d in report.version_diffs for n in d.versions)]
        )
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("name", *(_e(n) for n in names), "severity", "expected", "counts", "note")
    )
    rows = []
    roots = {d.name: d for d in report.version_diffs if d.caused_by is None}
    for d in report.version_diffs:
        versions = "".join(f"<td><code>{_e(d.versions.get(n) or '-')}</code></td>" for n in names)
        root = roots.get(d.caused_by or "")
        name = f"<code>{_e(d.name)}</code>"
        counts = "<b>fails</b>" if d.fails else "no"
        cls = ' class="fails"' if d.fails else ""
        if root is not None:  # follows from the root cause listed above it
            name = f"&#8627; {name}"
            if root.fails or not d.fails:
                counts, cls = f"with <code>{_e(root.name)}</code>", ' class="derived"'
        rows.append(
            f"<tr{cls}><td>{name}</td>{versions}<td>{_e(d.severity)}</td>"
            f"<td>{'yes' if d.expected else 'no'}</td>"
            f"<td>{counts}</td><td>{_e(d.note)}</td></tr>"
        )
    return (
        '<h2>Version differences</h2><table class="version-diffs">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _warnings(report: ParityReport) -> str:
    """The warnings each environment caught: those only one caught first, then a table."""
    only: dict[str, list[str]] = {}
    for w in report.warnings_only_here:
        if w.category not in only.setdefault(w.environment, []):
            only[w.environment].append(w.category)
    parts = ["<h2>Warnings</h2>"]
    if only:
        items = "".join(
            f"<li><b>only in {_e(env)}</b>: "
            + ", ".join(f"<code>{_e(c)}</code>" for c in categories)
            + "</li>"
            for env, categories in only.items()
        )
        parts.append(f'<ul class="reasons only-here">{items}</ul>')
    if report.warnings:
        head = "".join(
            f"<th>{h}</th>"
            for h in ("environment", "warning", "count", "counts", "message", "first at")
        )
        rows = []
        for w in report.warnings:
            verdict = "<b>fails</b>" if w.fails else ("only here" if w.only_here else "reported")
            level = f' <span class="muted">{_e(w.level)}</span>' if w.level else ""
            cls = ' class="fails"' if w.fails else ""
            rows.append(
                f"<tr{cls}><td>{_e(w.environment)}</td><td><code>{_e(w.category)}</code>{level}"
                f'</td><td class="num">{w.count}</td><td>{verdict}</td>'
                f"<td><pre>{_e(w.message)}</pre></td><td><code>{_e(w.first)}</code></td></tr>"
            )
        parts.append(
            '<table class="warnings">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    for env, n in report.warnings_dropped.items():
        parts.append(
            f'<p class="muted">{n} more warnings in {_e(env)} past the worker\'s limit '
            "(not listed).</p>"
        )
    return "\n".join(parts)
