"""An image classifier as a new user writes it, checked live and against a golden bundle.

The test writes the user's project into a temporary folder: an adapter whose `preprocess`
resizes channels-last uint8 images with Pillow and normalises them with NumPy scalars, a
small fixed-weight CNN in NumPy giving logits, and a `postprocess` giving the logits and
one class id per sample; two locks solved by `envlock lock` from small specs (training:
NumPy 1.26.4 and Pillow 10.4.0; inference: NumPy 2.2.6 and Pillow 11.3.0).

What differs is NEP 50. The black level is a NumPy integer (`np.int64(16)`, as np.argmax
over a histogram gives it): under NumPy 1, `uint8 - np.int64(16)` stays uint8 (value-based
casting) and pixels darker than 16 wrap to bright ones before the clip; under NumPy 2 it is
int64 and they clip to 0. The mean and std are `np.float64` scalars, so the normalised
images are float32 under NumPy 1 and float64 under NumPy 2. (Measured on this model: the
float32/float64 difference alone changes no label of 512 samples, max logit difference
2e-7; the wrapped pixels change about one label in six. Pillow 9.3 to 13.0 resize these
images to the same bytes.)

Every figure the asserts compare with is measured: the labels by running the adapter in
each venv on the inputs the check used (saved as .npy, read back without pickle), never a
hard-coded count. The venvs are built once in the session's shared cache; the live check
and the bundle are made once for the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_valid_report, run_cli

from envlock.backends import VenvBackend
from envlock.lockfile import MAIN, read_lock
from parity.inputs.seeded import digest

pytestmark = pytest.mark.slow

VERSIONS = {"train": ("1.26.4", "10.4.0"), "infer": ("2.2.6", "11.3.0")}  # numpy, pillow
COUNT = 256

ADAPTER = '''\
"""A small image classifier as its team serves it: Pillow resizes, NumPy normalises."""

import numpy as np
from PIL import Image

SIZE = (32, 32)
# Found at training time: the black level as np.argmax over a histogram gives it, the
# mean and std as x.mean() and x.std() do. All three are NumPy scalars.
BLACK = np.int64(16)
MEAN = np.float64(0.4493)
STD = np.float64(0.2261)


def _weights():
    rng = np.random.Generator(np.random.PCG64(20261129))
    conv = (rng.random((16, 3, 3, 3)) - 0.5).astype(np.float32)
    bias = ((rng.random(16) - 0.5) * 0.1).astype(np.float32)
    dense = (rng.random((16, 10)) - 0.5).astype(np.float32)
    return conv, bias, dense


CONV, BIAS, DENSE = _weights()


def preprocess(images):
    """[N, 64, 64, 3] uint8 (or floats in [0, 1]) -> [N, 3, 32, 32], normalised."""
    small = []
    for image in images:
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        resized = np.asarray(Image.fromarray(image).resize(SIZE))
        lifted = np.clip(resized - BLACK, 0, 255)
        small.append(lifted.astype(np.float32) / 255)
    x = (np.stack(small) - MEAN) / STD
    return x.transpose(0, 3, 1, 2)


def model(x):
    """conv 3x3 -> relu -> global average pool -> centred -> linear: logits [N, 10]."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    features = np.einsum("nchwij,kcij->nkhw", windows, CONV) + BIAS[:, None, None]
    pooled = np.maximum(features, 0).mean(axis=(2, 3))
    return (pooled - pooled.mean(axis=1, keepdims=True)) @ DENSE


def postprocess(logits):
    return {"logits": logits.astype(np.float32), "label": logits.argmax(axis=1).astype(np.int64)}


def predict(batch):
    return postprocess(model(preprocess(batch["image"])))


def stages():
    return [
        ("preprocess", lambda batch: preprocess(batch["image"])),
        ("model", model),
        ("postprocess", postprocess),
    ]
'''

SPEC = """\
[project]
name = "imgclf-{side}-env"
version = "0"
requires-python = "==3.11.*"
dependencies = ["numpy=={numpy}", "pillow=={pillow}"]

[tool.uv]
package = false
environments = ["sys_platform == 'linux' and platform_machine == 'x86_64'"]
exclude-newer = "2026-11-25T00:00:00Z"
"""

MODEL_AND_INPUTS = f"""\
[model]
adapter = "imgclf:predict"
stages = "imgclf:stages"
paths = ["src"]

[inputs]
seed = 15
count = {COUNT}
batch_size = 64

[inputs.arrays.image]
shape = [64, 64, 3]
dtype = "uint8"
generator = "image"
layout = "channels_last"
"""

TRAIN = """
[environments.train]
backend = "venv"
lock = "locks/train/pylock.toml"
"""

REST = """
[environments.infer]
backend = "venv"
lock = "locks/infer/pylock.toml"

[run]
reference = "train"
threads = 1

[tolerance]
atol = 1e-5
rtol = 1e-4

[tolerance.outputs.label]
policy = "decision"
min_agreement = 0.99

[policy]
fail_on_version_diffs = ["numerics"]
"""

# Runs inside a venv: the adapter on the saved inputs, its results saved as plain .npy.
MEASURE = """\
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import imgclf
images = np.load(sys.argv[2], allow_pickle=False)
pre = imgclf.preprocess(images)
np.save(sys.argv[3] + "-pre.npy", pre)
np.save(sys.argv[3] + "-label.npy", imgclf.postprocess(imgclf.model(pre))["label"])
"""


@dataclass(frozen=True)
class Project:
    root: Path
    config: Path
    locks: dict[str, Path]


@dataclass(frozen=True)
class Run:
    code: int
    report: dict[str, Any]
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Live:
    run: Run
    html: str
    work: Path


@dataclass(frozen=True)
class Measured:
    """What the adapter gives in each venv on the inputs the check used."""

    labels: dict[str, np.ndarray]
    pre: dict[str, np.ndarray]

    @property
    def differing(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.labels["train"] != self.labels["infer"])]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("imgclf") / "imgclf"
    (root / "src").mkdir(parents=True)
    (root / "src" / "imgclf.py").write_text(ADAPTER)
    locks = {}
    for side, (numpy, pillow) in VERSIONS.items():
        folder = root / "locks" / side
        folder.mkdir(parents=True)
        spec = folder / "pyproject.toml"
        spec.write_text(SPEC.format(side=side, numpy=numpy, pillow=pillow))
        result = run_cli("envlock", "lock", "--spec", str(spec))
        assert result.returncode == 0, result.stderr
        locks[side] = folder / "pylock.toml"
    config = root / "parity.toml"
    config.write_text(MODEL_AND_INPUTS + TRAIN + REST)
    return Project(root, config, locks)


def check(project: Project, config: Path, cache: Path, *extra: str) -> Run:
    out = project.root / f"{config.stem}-{len(list(project.root.glob('*.json')))}.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(config),
        "--cache-dir",
        str(cache),
        "--json",
        str(out),
        *extra,
    )
    assert out.exists(), result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    return Run(result.returncode, report, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def live(project: Project, shared_cache: Path) -> Live:
    """The live check of train against infer, with --localize and an HTML report."""
    work, html = project.root / "work", project.root / "report.html"
    run = check(
        project,
        project.config,
        shared_cache,
        "--localize",
        "--html",
        str(html),
        "--workdir",
        str(work),
    )
    return Live(run, html.read_text(), work)


@pytest.fixture(scope="module")
def measured(project: Project, live: Live, shared_cache: Path) -> Measured:
    """The adapter run in each venv, by subprocess, on the inputs the live check used."""
    with np.load(live.work / "inputs" / "inputs.npz", allow_pickle=False) as data:
        inputs = {name: data[name] for name in data.files}
    assert digest(inputs) == live.run.report["inputs"]["digest"]  # the very inputs it used
    images = project.root / "images.npy"
    np.save(images, inputs["image"])
    script = project.root / "measure.py"
    script.write_text(MEASURE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    labels, pre = {}, {}
    for side, lock in project.locks.items():
        venv = VenvBackend(shared_cache).find(read_lock(lock), MAIN)
        assert venv is not None, f"the check built no {side} venv"
        prefix = project.root / f"measured-{side}"
        done = subprocess.run(
            [str(venv.python), str(script), str(project.root / "src"), str(images), str(prefix)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        labels[side] = np.load(f"{prefix}-label.npy", allow_pickle=False)
        pre[side] = np.load(f"{prefix}-pre.npy", allow_pickle=False)
    return Measured(labels, pre)


@pytest.fixture(scope="module")
def bundle(project: Project, live: Live, shared_cache: Path) -> Path:
    """The training environment's recording, made while it still exists."""
    out = project.root / "golden.tar.gz"
    result = run_cli(
        "parity",
        "record",
        "--config",
        str(project.config),
        "--env",
        "train",
        "--out",
        str(out),
        "--archive",
        "--cache-dir",
        str(shared_cache),
    )
    assert result.returncode == 0, result.stderr
    return out


def output(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in report["outputs"] if o["name"] == name)


def versions(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in report["version_diffs"]}


def drop_notes(diffs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "note"} for d in diffs]


def label_verdict(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("passed", "cause", "unit", "total", "mismatched", "agreement", "disagreements")
    return {k: output(report, "label")[k] for k in keys}


def test_the_live_check_fails_on_numpy_and_judges_label_as_per_sample_labels(
    live: Live, measured: Measured
) -> None:
    run = live.run
    assert run.code == 1, run.stdout + run.stderr
    assert run.report["verdict"] == "fail" and run.report["errors"] == []

    # The versions: numpy and Pillow differ, both numerics, both fail the check.
    diffs = versions(run.report)
    for name, at in (("numpy", 0), ("pillow", 1)):
        want = {"train": VERSIONS["train"][at], "infer": VERSIONS["infer"][at]}
        assert diffs[name]["versions"] == want
        assert (diffs[name]["severity"], diffs[name]["fails"]) == ("numerics", True)
        assert any(
            r.startswith(f"{name} differs: {want['train']} (train)") for r in run.report["reasons"]
        )

    # numpy's note explains this very drift: an int64 scalar no longer wraps uint8 pixels.
    assert "NEP 50" in diffs["numpy"]["note"] and "uint8" in diffs["numpy"]["note"]

    # The labels: one class id per sample, agreement the fraction of equal labels the
    # models give in the two venvs, the disagreeing rows exactly those samples.
    differing = measured.differing
    assert 0 < len(differing) < COUNT  # the wrapped pixels move some labels, not all
    label = output(run.report, "label")
    assert (label["policy"], label["passed"], label["cause"]) == ("decision", False, "tolerance")
    assert (label["unit"], label["total"], label["mismatched"]) == ("rows", COUNT, len(differing))
    same = float(np.mean(measured.labels["train"] == measured.labels["infer"]))
    assert label["agreement"] == pytest.approx(same, abs=1e-12)
    assert len(label["disagreements"]) == min(5, len(differing))
    for row, sample in zip(label["disagreements"], differing, strict=False):
        assert row["index"] == [sample]
        assert row["reference"] == [int(measured.labels["train"][sample])]
        assert row["candidate"] == [int(measured.labels["infer"][sample])]
    first = label["disagreements"][0]
    assert (
        f"disagrees at [{differing[0]}]: {first['reference'][0]} (train) vs "
        f"{first['candidate'][0]} (infer)"
    ) in run.stdout
    # No atol/rtol advice for labels, in the terminal or the HTML; logits get it.
    label_lines = [line for line in run.stdout.splitlines() if re.search(r"\blabel\b", line)]
    assert label_lines and not any(re.search(r"atol|rtol|worst at", ln) for ln in label_lines)
    assert not re.search(r"atol|rtol", section(live.html, "label"))
    assert "min_agreement" in section(live.html, "label")

    logits = output(run.report, "logits")
    assert (logits["policy"], logits["passed"], logits["cause"]) == ("allclose", False, "tolerance")


def test_localize_names_preprocess_first(live: Live, measured: Measured) -> None:
    loc = live.run.report["localization"]
    assert loc.get("error") is None, loc
    # It reran the first failing output's (outputs in name order) first disagreeing sample.
    assert (loc["output"], loc["sample"]) == ("label", measured.differing[0])
    assert loc["first_stage"] == "preprocess"
    entry = next(e for e in loc["entries"] if e["name"] == "preprocess")
    assert entry["passed"] is False
    dtypes = (entry["reference_dtype"], entry["candidate_dtype"])
    assert dtypes == (str(measured.pre["train"].dtype), str(measured.pre["infer"].dtype))
    assert "outputs first diverge in stage 'preprocess'" in live.run.stdout


def test_against_the_bundle_with_the_training_environment_gone(
    project: Project, live: Live, measured: Measured, bundle: Path, shared_cache: Path
) -> None:
    # The training environment goes: its lock file, its venv, its table in the config.
    train_lock = read_lock(project.locks["train"])
    venv = VenvBackend(shared_cache).path_for(train_lock, MAIN)
    assert venv.is_dir()
    project.locks["train"].unlink()
    shutil.rmtree(venv)
    deploy = project.root / "deploy.toml"
    deploy.write_text(MODEL_AND_INPUTS + REST)
    assert "[environments.train]" not in deploy.read_text()

    run = check(project, deploy, shared_cache, "--against", str(bundle))
    assert run.code == 1, run.stdout + run.stderr
    assert "reference: train as recorded in" in run.stderr
    assert run.report["against"]["environment"] == "train"
    # The same verdict, reasons, version differences and labels as the live check.
    want = live.run.report
    assert run.report["verdict"] == want["verdict"] == "fail"
    assert run.report["reasons"] == want["reasons"]
    assert drop_notes(run.report["version_diffs"]) == drop_notes(want["version_diffs"])
    for ours, theirs in zip(run.report["version_diffs"], want["version_diffs"], strict=True):
        # Only the live check has both locks to say they pin different versions.
        assert theirs["note"].endswith(ours["note"]), (theirs["note"], ours["note"])
    assert label_verdict(run.report) == label_verdict(want)
    assert output(run.report, "label")["mismatched"] == len(measured.differing)
    assert output(run.report, "logits")["passed"] is False
    assert not venv.exists()  # nothing rebuilt the training environment

    # --localize has no reference environment to run the stages in: it says so, and the
    # check's result stands.
    localized = check(project, deploy, shared_cache, "--against", str(bundle), "--localize")
    assert localized.code == 1, localized.stdout + localized.stderr
    assert label_verdict(localized.report) == label_verdict(want)
    loc = localized.report["localization"]
    assert loc["error"] == (
        "'train' is not a live environment (a golden bundle?): localizing runs the stages in "
        "both environments"
    )
    assert loc["summary"] == "not localized: " + loc["error"]
    assert "localize: not localized: 'train' is not a live environment" in localized.stderr
    assert "Traceback" not in localized.stderr
    assert not venv.exists()


def test_image_model_pictures(live: Live, measured: Measured) -> None:
    """The HTML report draws the localized image-like stage, per the pictures contract:
    the reference's and the candidate's sample as images, and their difference."""
    report = live.run.report
    loc = report["localization"]
    figures = parse_figures(live.html)
    pictures = [f for f in figures if "pictures" in f.classes]
    drawn = [f for f in pictures if f.value == "preprocess"]
    assert len(drawn) == 1, [f.value for f in pictures]
    figure = drawn[0]
    assert [alt for alt, _src in figure.images] == [
        report["reference"],
        report["candidate"],
        "difference",
    ]
    assert all(src.startswith("data:image/png;base64,") for _alt, src in figure.images)
    assert re.search(rf"\bsample\b.*\b{loc['sample']}\b", figure.caption, re.IGNORECASE)

    # Nothing image-like about logits [N, 10] or label [N], nor about the localized values
    # they come from ([1, 10] and [1]): no pictures, and no heatmap for the outputs.
    flat = ("logits", "label", "model", "postprocess[logits]", "postprocess[label]")
    assert not [f.value for f in pictures if f.value in flat]
    for name in ("logits", "label"):
        assert '<figure class="heatmap"' not in section(live.html, name)
        assert 'class="pictures"' not in section(live.html, name)

    from PIL import Image

    decoded = [
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) for _a, src in figure.images
    ]
    sample = loc["sample"]
    for image, side in zip(decoded[:2], ("train", "infer"), strict=True):
        # 32x32 (or a whole multiple of it), in colour, and the picture of that side's stage
        # value, channels as RGB: each channel follows the measured one (not striped).
        assert image.mode in ("RGB", "RGBA") and image.width == image.height
        assert image.width % 32 == 0, image.size
        step = image.width // 32
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)[::step, ::step]
        stage = measured.pre[side][sample]  # [3, 32, 32]
        for c in range(3):
            r = np.corrcoef(pixels[:, :, c].ravel(), stage[c].ravel())[0, 1]
            assert r > 0.9, (side, c, r)
    # The stage differs on this sample, so the difference image is not one flat colour.
    assert not np.array_equal(measured.pre["train"][sample], measured.pre["infer"][sample])
    difference = np.asarray(decoded[2].convert("RGB"))
    assert len(np.unique(difference.reshape(-1, 3), axis=0)) > 1


def section(html: str, name: str) -> str:
    """The HTML of output `name`'s section."""
    found = re.search(
        rf'<section class="output [^"]*"[^>]*>\s*<h3><code class="name">{re.escape(name)}</code>'
        r".*?</section>",
        html,
        re.DOTALL,
    )
    assert found, f"no section for output {name!r}"
    return found.group(0)


@dataclass
class Figure:
    classes: list[str]
    value: str | None
    images: list[tuple[str, str]]  # (alt, src)
    caption: str = ""


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: list[Figure] = []
        self._open: Figure | None = None
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._open = Figure((a.get("class") or "").split(), a.get("data-value"), [])
            self.figures.append(self._open)
        elif tag == "img" and self._open is not None:
            self._open.images.append((a.get("alt") or "", a.get("src") or ""))
        elif tag == "figcaption":
            self._in_caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._open = None
        elif tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption and self._open is not None:
            self._open.caption += data


def parse_figures(html: str) -> list[Figure]:
    parser = _Figures()
    parser.feed(html)
    return parser.figures
