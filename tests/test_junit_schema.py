"""`render_junit` output is valid under the JUnit XML Schema the Jenkins xUnit plugin uses.

The schema is tests/data/junit/junit-10.xsd (see the README beside it). Reports are built
from the dataclasses directly, so no environment is materialized.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import xmlschema

from parity.comparison import Noise, OutputComparison
from parity.judging.compare import compare_arrays
from parity.policies import TolerancePolicy
from parity.render.junit import render_junit
from parity.report import ParityReport, VersionDiff

XSD = Path(__file__).resolve().parent / "data" / "junit" / "junit-10.xsd"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD)


def output(name: str, passed: bool = True, **fields: object) -> OutputComparison:
    values: dict[str, object] = {
        "name": name,
        "passed": passed,
        "reason": None,
        "reference_dtype": "float32",
        "candidate_dtype": "float32",
        "reference_shape": (4, 3),
        "candidate_shape": (4, 3),
        "atol": 1e-5,
        "rtol": 1e-4,
        "total": 12,
        "mismatched": 0,
        "max_abs_diff": 0.0,
        "max_rel_diff": 0.0,
        "worst_index": None,
        "worst_reference": None,
        "worst_candidate": None,
        "atol_to_pass": 0.0,
    }
    values.update(fields)
    return OutputComparison(**values)  # type: ignore[arg-type]


def report(
    verdict: str,
    outputs: list[OutputComparison] | None = None,
    version_diffs: list[VersionDiff] | None = None,
    errors: list[str] | None = None,
) -> ParityReport:
    return ParityReport(
        verdict=verdict,  # type: ignore[arg-type]
        config="parity.toml",
        reference="train",
        candidate="infer",
        inputs={"count": 8, "seed": 0, "digest": "sha256:0"},
        environments={},
        outputs=outputs or [],
        version_diffs=version_diffs or [],
        reasons=[],
        errors=errors or [],
        seconds={"total": 12.5},
    )


PASSING = report("pass", outputs=[output("logits"), output("probs")])
FAILING = report(
    "fail",
    outputs=[
        output("logits"),
        output(
            "probs",
            passed=False,
            reason="3 of 12 elements beyond atol=1e-05, rtol=0.0001 (max abs diff 0.002)",
            mismatched=3,
            max_abs_diff=2e-3,
            max_rel_diff=4e-3,
            worst_index=(2, 1),
            worst_reference=0.5,
            worst_candidate=0.502,
            atol_to_pass=1.95e-3,
        ),
        output(
            "embedding",
            passed=False,
            reason="shape differs: (4, 3) (reference) vs (4, 2)",
            candidate_shape=(4, 2),
            mismatched=12,
        ),
    ],
    version_diffs=[
        VersionDiff(
            name="numpy",
            versions={"train": "2.4.6", "infer": "1.26.4"},
            severity="numerics",
            expected=False,
            note="NEP 50 changed scalar promotion",
            fails=True,
        ),
        VersionDiff(
            name="tqdm",
            versions={"train": "4.67.1", "infer": None},
            severity="benign",
            expected=True,
            note="only in the train group",
        ),
    ],
)
ERROR = report(
    "error",
    errors=["infer: worker exited with status 1; last output:\nTraceback ...\nValueError: bad"],
)


def suite_counts(root: ET.Element) -> list[tuple[str, str, str]]:
    """(tests, failures, errors) as stated by each element that states them."""
    return [
        (e.get("tests", ""), e.get("failures", ""), e.get("errors", ""))
        for e in [root, *root.iter("testsuite")]
    ]


def counted(root: ET.Element) -> tuple[str, str, str]:
    """(tests, failures, errors) counted from the testcases themselves."""
    cases = list(root.iter("testcase"))
    return (
        str(len(cases)),
        str(sum(c.find("failure") is not None for c in cases)),
        str(sum(c.find("error") is not None for c in cases)),
    )


@pytest.mark.parametrize(
    ("parity_report", "expected"),
    [(PASSING, ("2", "0", "0")), (FAILING, ("5", "3", "0")), (ERROR, ("1", "0", "1"))],
    ids=["pass", "fail", "error"],
)
def test_report_is_valid_junit_and_counts_match(
    schema: xmlschema.XMLSchema, parity_report: ParityReport, expected: tuple[str, str, str]
) -> None:
    text = render_junit(parity_report)
    schema.validate(text)
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    assert counted(root) == expected
    assert suite_counts(root) == [expected, expected]


def test_failing_report_marks_the_failing_cases_only() -> None:
    root = ET.fromstring(render_junit(FAILING))
    failed = {c.get("name"): c.find("failure") is not None for c in root.iter("testcase")}
    assert failed == {
        "logits": False,
        "probs": True,
        "embedding": True,
        "numpy": True,
        "tqdm": False,
    }
    probs = root.find(".//testcase[@name='probs']/failure")
    assert probs is not None
    assert probs.get("message", "").startswith("3 of 12 elements beyond atol=1e-05")
    tqdm_out = root.find(".//testcase[@name='tqdm']/system-out")
    assert tqdm_out is not None and "absent (infer)" in (tqdm_out.text or "")


def test_control_characters_in_an_error_stay_valid_and_visible(
    schema: xmlschema.XMLSchema,
) -> None:
    # A worker's log tail can hold ANSI colour codes and undecodable bytes.
    text = render_junit(report("error", errors=["\x1b[31mboom\x1b[0m\nbad byte \udcff"]))
    schema.validate(text)
    error = ET.fromstring(text).find(".//testcase/error")
    assert error is not None
    assert error.get("message") == "\\x1b[31mboom\\x1b[0m"
    assert error.text == "\\x1b[31mboom\\x1b[0m\nbad byte \\udcff"


def test_schema_rejects_a_testcase_without_a_name(schema: xmlschema.XMLSchema) -> None:
    root = ET.fromstring(render_junit(PASSING))
    case = next(root.iter("testcase"))
    del case.attrib["name"]
    broken = ET.tostring(root, encoding="unicode")
    with pytest.raises(xmlschema.XMLSchemaValidationError, match="name"):
        schema.validate(broken)


def test_schema_rejects_a_suite_without_counts(schema: xmlschema.XMLSchema) -> None:
    root = ET.fromstring(render_junit(FAILING))
    suite = root.find("testsuite")
    assert suite is not None
    del suite.attrib["failures"]
    assert not schema.is_valid(ET.tostring(root, encoding="unicode"))


def test_output_cases_carry_policy_cause_and_statistics(schema: xmlschema.XMLSchema) -> None:
    ref = np.ones((4, 25))
    drifted = ref + 0.001 * np.arange(100).reshape(4, 25)
    noise = {"train": Noise(0.0, 0, 100), "infer": Noise(0.01, 40, 100)}
    outputs = [
        compare_arrays("y", ref, drifted, TolerancePolicy(atol=0.05)),
        compare_arrays("ulp", ref, np.nextafter(ref, 2.0), TolerancePolicy(kind="ulp", max_ulp=1)),
        compare_arrays("label", ref, drifted, TolerancePolicy(kind="decision")),
        compare_arrays("image", ref, drifted, TolerancePolicy(kind="psnr", min_db=20)),
        compare_arrays("noisy", ref, drifted, TolerancePolicy(atol=0.05), noise=noise),
        compare_arrays("calm", ref, drifted, TolerancePolicy(noise_factor=10), noise=noise),
    ]
    text = render_junit(report("fail", outputs=outputs))
    schema.validate(text)
    root = ET.fromstring(text)

    def evidence(name: str, child: str) -> tuple[str | None, list[str]]:
        element = root.find(f".//testcase[@name='{name}']/{child}")
        assert element is not None, name
        return element.get("type"), (element.text or "").splitlines()

    kind, lines = evidence("y", "failure")
    assert kind == "tolerance"
    assert lines == [
        "policy: allclose(atol=0.05, rtol=0)",
        "cause: tolerance",
        "mismatched: 50 of 100 elements (50%)",
        "abs diff: max 0.099, median 0.0495, p99 0.09801",
        "rel diff: max 0.099, median 0.0495, p99 0.09801",
        "would pass: atol >= 0.099 (at rtol=0), rtol >= 0.049 (at atol=0.05)",
        "worst at [3, 24]: 1 (train) vs 1.099 (infer)",
    ]
    assert "max ULP diff: 1" in evidence("ulp", "system-out")[1]
    kind, lines = evidence("label", "failure")
    assert kind == "tolerance"
    # decision judges the classes rows choose: its own advice and rows, no atol or worst element
    assert lines[2] == "mismatched: 4 of 4 rows (100%)"
    assert lines[5:] == [
        "would pass: min_agreement ≤ 0",
        "agreement: 0",
        *(f"disagrees at [{row}]: 0 (train) vs 24 (infer)" for row in range(4)),
    ]
    assert "PSNR: 24.84 dB" in evidence("image", "system-out")[1]
    kind, lines = evidence("noisy", "failure")
    assert kind == "nondeterministic"
    assert lines[-1] == (
        "nondeterministic: infer disagrees with itself "
        "(max abs diff 0.01 between two runs, 40 of 100 elements)"
    )
    _, lines = evidence("calm", "system-out")
    assert lines[0] == "policy: allclose(atol=0.1, rtol=0, noise_factor=10)"
    assert lines[-1].startswith("nondeterministic: infer disagrees with itself")
