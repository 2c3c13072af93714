"""Pictures where a person would rather look than read: an image-like value that differs is
shown as both environments' images and their difference, side by side; a 2-D output
(logits, tabular rows) gets a per-column view instead, and neither a heatmap nor pictures.

Comparisons are real (`compare_arrays`, and `parity check` in local environments for the
localized stage and the golden bundle); the PNGs are decoded here and checked pixel by
pixel against the arrays they were drawn from.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, assert_valid_report, run_cli
from test_html_report import Element, failing_report, parse, rgb, sections

from parity.arrays import NpzMember
from parity.comparison import OutputComparison
from parity.judging.compare import compare_arrays
from parity.judging.pictures import image_layout
from parity.policies import TolerancePolicy
from parity.render.html import render_html
from parity.report import ParityReport

PREFIX = "data:image/png;base64,"


def decode_png(uri: str) -> np.ndarray:
    """An 8-bit grey or RGB PNG data URI (unfiltered rows) as (rows, columns, channels)."""
    assert uri.startswith(PREFIX)
    png = base64.b64decode(uri[len(PREFIX) :])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        chunks[kind] = chunks.get(kind, b"") + png[at + 8 : at + 8 + length]
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (0, 2)
    channels = 3 if colour == 2 else 1
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, channels)


def report_of(*outputs: OutputComparison) -> ParityReport:
    return dataclasses.replace(failing_report(), outputs=list(outputs), version_diffs=[])


def figure(root: Element, cls: str, name: str) -> Element:
    (found,) = [f for f in root.find_all("figure", cls) if f.attrs.get("data-value") == name]
    return found


def side_by_side(fig: Element) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The reference's, the candidate's and the difference image, and the caption."""
    imgs = fig.find_all("img")
    assert [i.attrs["alt"] for i in imgs] == ["train", "infer", "difference"]
    ref, cand, diff = (decode_png(i.attrs["src"]) for i in imgs)
    (caption,) = fig.find_all("figcaption")
    return ref, cand, diff, " ".join(caption.text().split())


def zero_colour(fig: Element) -> tuple[int, int, int]:
    """The difference legend's colour for 0."""
    (legend,) = fig.find_all("svg", "legend")
    return rgb(legend.find_all("rect")[0].attrs["fill"])


def rgb_pattern() -> np.ndarray:
    """(3, 64, 64, 3) channels last: red grows left to right, green top to bottom, blue
    a checkerboard of 8-pixel squares."""
    y, x = np.mgrid[0:64, 0:64]
    one = np.stack([x / 63, y / 63, ((x // 8 + y // 8) % 2).astype(float)], axis=-1)
    return np.repeat(one[np.newaxis], 3, axis=0).astype(np.float32)


def test_the_one_rule_for_image_like_values() -> None:
    assert image_layout((5, 28, 28)) is not None  # grey
    assert image_layout((5, 32, 32, 3)).channels_last  # type: ignore[union-attr]
    assert image_layout((5, 3, 32, 32)).kind == "rgb"  # type: ignore[union-attr]
    assert image_layout((5, 64, 16, 16)).kind == "feature map"  # type: ignore[union-attr]
    for shape in [(128, 10), (512, 6), (5, 4, 32), (5, 32, 4, 3), (7,), (2, 3, 4, 8, 8)]:
        assert image_layout(shape) is None, shape


def test_an_rgb_image_is_shown_in_both_environments_and_where_they_differ() -> None:
    reference = rgb_pattern()
    candidate = reference.copy()
    candidate[1, 8:16, 40:56, :] += np.float32(0.25)  # a brightness shift in a patch
    candidate[0, 3, 3, 0] += np.float32(1e-3)  # smaller: the worst sample is 1
    o = compare_arrays("photo", reference, candidate, TolerancePolicy(atol=1e-5), pictures=True)
    fig = figure(parse(render_html(report_of(o))), "pictures", "photo")
    ref, cand, diff, caption = side_by_side(fig)

    assert ref.shape == cand.shape == diff.shape == (64, 64, 3)  # RGB, not striped
    red, green, blue = ref[..., 0].astype(int), ref[..., 1].astype(int), ref[..., 2]
    assert (np.diff(red, axis=1) > 0).all() and (np.diff(red, axis=0) == 0).all()
    assert (np.diff(green, axis=0) > 0).all() and (np.diff(green, axis=1) == 0).all()
    assert ((blue > 0) == (reference[1, ..., 2] == 1)).all() and len(np.unique(blue)) == 2
    # The two images differ exactly where the arrays do, and on one scale: brighter there.
    changed = (reference[1] != candidate[1]).any(axis=2)
    assert ((ref != cand).any(axis=2) == changed).all()
    assert (cand[changed].astype(int) >= ref[changed].astype(int)).all()
    assert cand[changed].astype(int).sum() > ref[changed].astype(int).sum()
    # The difference is the scale's 0 colour exactly where equal, another colour elsewhere.
    zero = np.array(zero_colour(fig), dtype=np.uint8)
    assert ((diff == zero).all(axis=2) == ~changed).all()
    assert "Sample 1," in caption and "in colour (RGB)" in caption
    assert "Downsampled" not in caption


def test_a_feature_map_shows_the_channel_where_the_environments_differ_most() -> None:
    rng = np.random.default_rng(3)
    reference = rng.random((2, 16, 20, 24))
    candidate = reference.copy()
    candidate[0, 5, 2:6, 10:12] -= 0.5
    candidate[0, 9, 0, 0] += 0.1
    o = compare_arrays("features", reference, candidate, pictures=True)
    root = parse(render_html(report_of(o)))
    fig = figure(root, "pictures", "features")
    ref, cand, diff, caption = side_by_side(fig)
    assert ref.shape == cand.shape == (20, 24, 1)  # grey
    assert "Sample 0," in caption and "channel 5 of its 16" in caption
    changed = reference[0, 5] != candidate[0, 5]
    assert ((ref[..., 0] != cand[..., 0]) == changed).all()
    zero = np.array(zero_colour(fig), dtype=np.uint8)
    assert ((diff == zero).all(axis=2) == ~changed).all()
    assert len(sections(root)["features"].find_all("figure", "heatmap")) == 1


def test_a_large_image_is_downsampled_and_a_one_pixel_difference_still_shows() -> None:
    reference = np.zeros((2, 1, 300, 200), dtype=np.float32)
    candidate = reference.copy()
    candidate[1, 0, 151, 100] = 1.0
    o = compare_arrays("scan", reference, candidate, pictures=True)
    fig = figure(parse(render_html(report_of(o))), "pictures", "scan")
    ref, cand, diff, caption = side_by_side(fig)
    assert max(ref.shape[:2]) <= 128 and ref.shape[:2] == cand.shape[:2] == diff.shape[:2]
    x = "\N{MULTIPLICATION SIGN}"
    assert f"Downsampled from 300 {x} 200 to {ref.shape[0]} {x} {ref.shape[1]}" in caption
    zero = np.array(zero_colour(fig), dtype=np.uint8)
    differs = ~(diff == zero).all(axis=2)
    (rows, cols) = np.nonzero(differs)
    assert len(rows) == 1  # one block: the one holding pixel (151, 100)
    step = 300 / ref.shape[0]
    assert rows[0] == int(151 // step) and cols[0] == int(100 // step)


def test_two_dimensional_outputs_get_a_per_column_view_and_no_picture() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(128, 10)).astype(np.float32)
    drifted = logits.copy()
    drifted[::7, 3] += np.float32(0.01)
    drifted[5, 8] = np.float32(np.inf)
    table = rng.normal(size=(512, 6))
    changed = table.copy()
    changed[100:140, 1] *= 1.5
    wide = rng.normal(size=(4, 100))
    policy = TolerancePolicy(atol=1e-3)
    outputs = [
        compare_arrays("logits", logits, drifted, policy, pictures=True),
        compare_arrays("tabular", table, changed, policy, pictures=True),
        compare_arrays("embedding", wide, wide + 1, policy, pictures=True),
    ]
    root = parse(render_html(report_of(*outputs)))
    by_name = sections(root)
    for o, (ref, cand) in zip(outputs[:2], [(logits, drifted), (table, changed)], strict=True):
        section = by_name[o.name]
        assert o.heatmap is None and o.pictures is None
        assert not section.find_all("figure", "heatmap") and not section.find_all("img")
        assert not section.find_all("figure", "pictures")
        view = figure(section, "columns", o.name)
        rows = [[td.text() for td in tr.find_all("td")] for tr in view.find_all("tr")[1:]]
        with np.errstate(invalid="ignore"):
            diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
        beyond = ~(diff <= 1e-3)
        assert len(rows) == ref.shape[1]
        for i, row in enumerate(rows):
            worst = diff[:, i].max()
            shown = f"{worst:.4g}" if np.isfinite(worst) else "inf"
            assert row[:3] == [str(i), shown, f"{beyond[:, i].sum()} of {ref.shape[0]}"]
    assert not by_name["embedding"].find_all("figure", "columns")
    assert "No per-column view: 100 columns, more than 64." in by_name["embedding"].text()


ADAPTER = """\
import os
import numpy as np


def prepare(batch):
    x = batch["x"].copy()                         # (n, 3, 16, 16) float32 in [0, 1)
    if os.environ.get("DRIFT"):
        x[:, :, 4:8, 10:14] += np.float32(0.5)    # a brighter patch, in every channel
    return x


def model(x):
    return x * np.float32(2)


def finish(y):
    return {"image": y, "mean": y.mean(axis=(1, 2, 3))}


def stages():
    return [("prepare", prepare), ("model", model), ("finish", finish)]


def predict(batch):
    return finish(model(prepare(batch)))
"""

CONFIG = (
    LOCAL_CONFIG.format(timeout=120)
    .replace("count = 12", "count = 4")
    .replace("batch_size = 5", "batch_size = 4")
    .replace("shape = [3, 4]", "shape = [3, 16, 16]")
    .replace('paths = ["src"]', 'paths = ["src"]\nstages = "adapter:stages"')
    + '\n[environments.infer.env]\nDRIFT = "1"\n'
)


def patch_differs(fig: Element) -> None:
    """The pictures of a (3, 16, 16) value whose candidate is brighter in rows 4..8,
    columns 10..14: both images in colour, differing exactly there."""
    ref, cand, diff, _ = side_by_side(fig)
    assert ref.shape == (16, 16, 3)
    patch = np.zeros((16, 16), dtype=bool)
    patch[4:8, 10:14] = True
    assert ((ref != cand).any(axis=2) == patch).all()
    zero = np.array(zero_colour(fig), dtype=np.uint8)
    assert ((diff == zero).all(axis=2) == ~patch).all()


def test_a_localized_image_stage_is_shown_side_by_side(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, CONFIG)
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--localize",
        "--json",
        str(out),
        "--html",
        str(page),
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    loc = report["localization"]
    assert loc["first_stage"] == "prepare"
    # Pixels are for the page: neither outputs nor localized values carry them in JSON.
    assert all("pictures" not in o for o in report["outputs"])
    assert all("pictures" not in e for e in loc["entries"])
    root = parse(page.read_text())
    drawn = [f.attrs["data-value"] for f in root.find_all("figure", "pictures")]
    assert sorted(drawn) == sorted(["image", "prepare", "model", "finish[image]"])
    for name in drawn:
        fig = figure(root, "pictures", name)
        patch_differs(fig)
        (caption,) = fig.find_all("figcaption")
        assert f"Sample {loc['sample']}," in caption.text()
    mean = sections(root)["mean"]  # 1-D: no heatmap, pictures or per-column view
    assert not mean.find_all("img")
    assert not any(mean.find_all("figure", c) for c in ("heatmap", "pictures", "columns"))


def test_against_a_golden_bundle_the_reference_image_comes_from_the_bundle(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, CONFIG)
    recorded = run_cli(
        "parity", "record", "--config", str(cfg), "--env", "train", "--out", "golden", cwd=tmp_path
    )
    assert recorded.returncode == 0, recorded.stderr
    page = tmp_path / "report.html"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--against",
        "golden",
        "--html",
        str(page),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    patch_differs(figure(parse(page.read_text()), "pictures", "image"))


def test_one_sample_is_read_from_an_npz_member(tmp_path: Path) -> None:
    values = np.arange(5 * 3 * 8 * 8, dtype=">f4").reshape(5, 3, 8, 8)
    for compress in (np.savez, np.savez_compressed):
        path = tmp_path / f"{compress.__name__}.npz"
        compress(path, y=values)
        member = NpzMember(path, "y.npy")
        for i in (0, 3, 4):
            got = member.sample(i)
            assert got.dtype == np.dtype("float32") and (got == values[i]).all()
        with pytest.raises(IndexError):
            member.sample(5)
    fortran = tmp_path / "fortran.npz"
    np.savez(fortran, y=np.asfortranarray(values))
    member = NpzMember(fortran, "y.npy")
    for i in (0, 2, 4):
        assert (member.sample(i) == values[i]).all()
