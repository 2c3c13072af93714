"""The `cosine` policy: embeddings judged by direction, as their consumers read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from test_policies import config_error, load
from test_terminal import report

from parity.investigations.search import excess
from parity.judging.compare import compare_arrays
from parity.policies import TolerancePolicy, measure
from parity.render.markdown import render_markdown
from parity.render.terminal import render_text
from parity.report import SCHEMA_PATH

RNG = np.random.default_rng(7)
EMBEDDINGS = RNG.normal(size=(64, 32)).astype(np.float32)
COSINE = TolerancePolicy(kind="cosine", min_cosine=0.9999)


def test_embeddings_that_moved_a_little_pass_and_report_their_lowest_similarity() -> None:
    moved = EMBEDDINGS + np.float32(1e-4) * RNG.normal(size=EMBEDDINGS.shape).astype(np.float32)
    c = compare_arrays("embedding", EMBEDDINGS, moved, COSINE)
    assert c.passed, c.reason
    assert c.unit == "rows" and (c.total, c.mismatched) == (64, 0)
    lowest = c.measures["min_cosine"]
    expected = min(
        float(np.dot(r, m) / (np.linalg.norm(r) * np.linalg.norm(m)))
        for r, m in zip(EMBEDDINGS.astype(np.float64), moved.astype(np.float64), strict=True)
    )
    assert lowest == pytest.approx(expected, abs=1e-12)
    assert 0.9999 < lowest < 1.0
    assert measure(c) == ("min cosine", f"{lowest:.6g}")


def test_a_rescaled_embedding_passes_cosine_where_allclose_fails() -> None:
    scaled = EMBEDDINGS * np.float32(2.0)
    assert compare_arrays("e", EMBEDDINGS, scaled, COSINE).passed
    assert not compare_arrays("e", EMBEDDINGS, scaled, TolerancePolicy(atol=1e-3)).passed


def test_a_row_that_turned_fails_naming_how_many_rows_and_the_lowest_similarity() -> None:
    turned = EMBEDDINGS.copy()
    turned[5] = -turned[5]  # the opposite direction: similarity -1
    turned[9] = np.roll(turned[9], 1)  # the same values, another direction
    c = compare_arrays("embedding", EMBEDDINGS, turned, COSINE)
    assert not c.passed
    assert c.cause == "tolerance"
    assert (c.total, c.mismatched) == (64, 2)
    assert c.measures["min_cosine"] == pytest.approx(-1.0)
    assert c.reason == "2 of 64 rows below cosine similarity 0.9999 (min -1)"


def test_zero_rows_agree_with_zero_rows_only() -> None:
    ref = np.zeros((3, 4))
    cand = ref.copy()
    cand[2, 0] = 1.0
    c = compare_arrays("e", ref, cand, COSINE)
    assert (c.total, c.mismatched) == (3, 1)
    assert c.measures["min_cosine"] == 0.0


def test_rows_of_huge_and_tiny_values_do_not_overflow_or_vanish() -> None:
    ref = np.array([[1e200, 2e200, 3e200], [1e-200, 2e-200, 3e-200]])
    c = compare_arrays("e", ref, ref * 1.5, COSINE)
    assert c.passed, c.reason
    assert c.measures["min_cosine"] == pytest.approx(1.0, abs=1e-12)


def test_a_nan_fails_by_the_nan_rule_and_its_row_counts() -> None:
    cand = EMBEDDINGS.copy()
    cand[3, 3] = np.nan
    c = compare_arrays("e", EMBEDDINGS, cand, COSINE)
    assert not c.passed
    assert c.cause == "nan_inf"
    assert c.mismatched == 1


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (
            np.array(1.0, dtype=np.float32),
            "cosine policy needs vectors along the last axis; this output is a scalar",
        ),
        (
            np.ones((2, 3), dtype=np.complex64),
            "cosine policy applies to real numbers; this output is complex",
        ),
    ],
)
def test_outputs_cosine_cannot_judge_are_refused_with_the_reason(
    array: np.ndarray, reason: str
) -> None:
    c = compare_arrays("e", array, array, COSINE)
    assert not c.passed
    assert c.cause == "policy"
    assert c.reason == reason


def test_the_config_reads_cosine_and_checks_its_bound(tmp_path: Path) -> None:
    config = load(
        tmp_path, '[tolerance.outputs.embedding]\npolicy = "cosine"\nmin_cosine = 0.999\n'
    )
    policy = config.tolerance_for("embedding")
    assert policy == TolerancePolicy(kind="cosine", min_cosine=0.999)
    assert policy.describe() == "cosine(min_cosine=0.999)"
    assert config_error(tmp_path, '[tolerance]\npolicy = "cosine"\nmin_cosine = 1.5\n') == (
        "tolerance.min_cosine: must be between -1 and 1, got 1.5"
    )


def test_search_grades_how_close_a_row_came_to_the_limit() -> None:
    moved = EMBEDDINGS.copy()
    moved[0] = EMBEDDINGS[0] + 0.01 * np.linalg.norm(EMBEDDINGS[0])
    c = compare_arrays("e", EMBEDDINGS, moved, COSINE)
    assert excess(c, COSINE) == pytest.approx((1 - c.measures["min_cosine"]) / 1e-4)


def test_reports_carry_the_measure_in_json_terminal_and_markdown() -> None:
    turned = EMBEDDINGS.copy()
    turned[5] = -turned[5]
    c = compare_arrays("embedding", EMBEDDINGS, turned, COSINE)
    r = report([c])
    data = json.loads(r.to_json())
    schema = json.loads(SCHEMA_PATH.read_text())
    output_schema = {"$defs": schema["$defs"], "$ref": "#/$defs/output"}
    errors = list(Draft202012Validator(output_schema).iter_errors(data["outputs"][0]))
    assert errors == []
    assert data["outputs"][0]["measures"] == {"min_cosine": pytest.approx(-1.0)}
    assert data["outputs"][0]["policy"] == "cosine"
    text = render_text(r, color=False)
    assert "min cosine" in text and "1 of 64 rows below cosine similarity" in text
    markdown = render_markdown(r)
    assert "| min cosine |" in markdown and "| min cosine -1 |" in markdown
