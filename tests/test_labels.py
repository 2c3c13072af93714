"""A classifier's per-sample labels under `decision`, end to end in local environments.

The adapter returns one class id per sample (a 1-D int64 output of 128). `LABEL_DRIFT`, set
only in the `infer` environment, moves the label of the samples whose first feature is
above a threshold: the test picks the threshold so that exactly 8 of the 128 move. The
check, `--localize` and the search's judge must all see those 8 labels as 8 disagreeing
rows, not one argmax over the whole vector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

from parity.config import load_config
from parity.inputs.seeded import generate
from parity.investigations.search import _judge, excess

ADAPTER = """\
import os
import numpy as np


def scores(batch):
    return batch["x"].astype(np.float64)


def decide(s):
    label = np.argmax(s, axis=1).astype(np.int64)  # (n,): one class id per sample
    threshold = os.environ.get("LABEL_DRIFT")
    if threshold is not None:
        moved = s[:, 0] > float(threshold)
        label[moved] = (label[moved] + 1) % s.shape[1]
    return {"label": label, "score": s.max(axis=1)}


def stages():
    return [("scores", scores), ("decide", decide)]


def predict(batch):
    return decide(scores(batch))
"""


def config(threshold: float | None, *, min_agreement: float = 1.0, score: str = "") -> str:
    text = (
        LOCAL_CONFIG.format(timeout=120)
        .replace('paths = ["src"]', 'paths = ["src"]\nstages = "adapter:stages"')
        .replace("count = 12\nbatch_size = 5", "count = 128\nbatch_size = 32")
        .replace("shape = [3, 4]", "shape = [6]")
    )
    if threshold is not None:
        text += f'\n[environments.infer.env]\nLABEL_DRIFT = "{threshold!r}"\n'
    text += f'\n[tolerance.outputs.label]\npolicy = "decision"\nmin_agreement = {min_agreement}\n'
    return text + (score or '\n[tolerance.outputs.score]\npolicy = "exact"\n')


def drifted(write_project: Callable[..., Path], **kwargs: Any) -> tuple[Path, list[int]]:
    """The project whose infer environment moves 8 labels, and which samples they are."""
    cfg = write_project(ADAPTER, config(None))
    x = generate(load_config(cfg).inputs)["x"]
    first = np.sort(x[:, 0])
    threshold = float(first[-9])  # exactly eight samples lie above it
    moved = [int(i) for i in np.flatnonzero(x[:, 0] > threshold)]
    assert len(moved) == 8
    return write_project(ADAPTER, config(threshold, **kwargs)), moved


def check(cfg: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    out = cfg.parent / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out), *extra)
    assert out.exists(), result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    return result.returncode, report, result.stdout


def test_eight_of_128_labels_moved_fail_with_agreement_120_of_128(
    write_project: Callable[..., Path],
) -> None:
    cfg, moved = drifted(write_project)
    page = cfg.parent / "report.html"
    code, report, text = check(cfg, "--localize", "--html", str(page))
    assert code == 1 and report["verdict"] == "fail"
    label = next(o for o in report["outputs"] if o["name"] == "label")
    assert (label["passed"], label["cause"]) == (False, "tolerance")
    assert (label["mismatched"], label["total"], label["unit"]) == (8, 128, "rows")
    assert label["agreement"] == 0.9375
    assert label["reason"] == (
        "label agreement 0.9375 (8 of 128 rows differ), below min_agreement 1"
    )
    assert [d["index"] for d in label["disagreements"]] == [[i] for i in moved[:5]]
    for d in label["disagreements"]:
        assert d["candidate"] == [(d["reference"][0] + 1) % 6]

    # The terminal: rows and agreement, the disagreeing samples, no atol/rtol advice.
    assert re.search(r"✗ label .* 8/128 rows .* agreement .* min_agreement", text)
    assert "label agreement 0.9375 (8 of 128 rows differ)" in text
    first = label["disagreements"][0]
    assert (
        f"disagrees at [{moved[0]}]: {first['reference'][0]} (train) vs "
        f"{first['candidate'][0]} (infer)"
    ) in text
    assert "and 3 more rows" in text
    assert "atol ≥" not in text and "rtol ≥" not in text and "worst at" not in text

    # The HTML page: no |a - b| statistics or histogram for the labels (class ids 1 apart
    # are not "closer" than 5 apart), but still for the score judged by its difference.
    html = page.read_text()
    sections = dict(
        re.findall(
            r'<section class="output \w+" id="output-\d+">\s*<h3><code class="name">'
            r"(\w+)</code>(.*?)</section>",
            html,
            re.S,
        )
    )
    assert set(sections) == {"label", "score"}
    assert '<table class="stats">' not in sections["label"]
    assert '<figure class="histogram">' not in sections["label"]
    assert "No |a &minus; b| statistics: decision judges the classes" in sections["label"]
    assert '<table class="stats">' in sections["score"]

    # --localize reran a disagreeing sample and judged its label as the check did: the
    # stage that decides is where the environments part.
    loc = report["localization"]
    assert (loc["output"], loc["sample"]) == ("label", moved[0])
    assert loc["first_stage"] == "decide"
    entries = {e["name"]: e for e in loc["entries"]}
    assert entries["scores"]["passed"] is True
    final = entries["decide[label]"]
    assert (final["passed"], final["cause"]) == (False, "tolerance")
    assert final["reason"].startswith("label agreement 0 (1 of 1 rows differ)")


def test_min_agreement_below_the_measured_agreement_passes(
    write_project: Callable[..., Path],
) -> None:
    cfg, _ = drifted(write_project, min_agreement=0.9)
    code, report, text = check(cfg)
    assert code == 0 and report["verdict"] == "pass", text
    label = next(o for o in report["outputs"] if o["name"] == "label")
    assert (label["passed"], label["mismatched"], label["agreement"]) == (True, 8, 0.9375)


def test_the_search_judges_each_sample_s_label_as_the_check_does(
    write_project: Callable[..., Path],
) -> None:
    cfg, moved = drifted(write_project)
    config_ = load_config(cfg)
    x = generate(config_.inputs)["x"]
    ref = np.argmax(x, axis=1).astype(np.int64)
    cand = ref.copy()
    cand[moved] = (cand[moved] + 1) % 6
    same = next(i for i in range(128) if i not in moved)
    policy = config_.tolerance_for("label")
    for sample, fails in ((moved[0], True), (same, False)):
        # As the search judges one sample: batches of one.
        one = _judge(
            config_, {"label": ref[sample : sample + 1]}, {"label": cand[sample : sample + 1]}
        )
        assert one["label"].passed is not fails
        assert (excess(one["label"], policy) > 1) is fails


def test_one_score_per_sample_under_decision_is_a_policy_error(
    write_project: Callable[..., Path],
) -> None:
    score = '\n[tolerance.outputs.score]\npolicy = "decision"\n'
    cfg = write_project(ADAPTER, config(None, score=score))
    code, report, text = check(cfg)
    assert code == 1
    out = next(o for o in report["outputs"] if o["name"] == "score")
    assert (out["passed"], out["cause"]) == (False, "policy")
    assert "1-D float64 output is ambiguous" in out["reason"]
    assert "policy = 'allclose'" in out["reason"]
    assert "✗ score (policy): decision policy on a 1-D float64 output is ambiguous" in text
