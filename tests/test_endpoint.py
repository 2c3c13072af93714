"""`backend = "endpoint"`: a check whose candidate is a running server speaking the Open
Inference Protocol v2 (REST), here a real one on 127.0.0.1 (tests/oip_server.py), against
a local environment running the same model code as its adapter."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, ROOT, assert_valid_report, run_cli
from oip_server import MODEL_CODE, Settings, self_signed, start

from parity.config import load_config
from parity.errors import ConfigError
from parity.runs.endpoint import (
    MAX_RETRY_AFTER,
    ResponseError,
    _retry_after,
    binary_request,
    json_request,
    read_response,
)

CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 7
count = 23
batch_size = 5

[inputs.arrays.x]
shape = [3, 4]
dtype = "float32"

[environments.local]
backend = "local"

[environments.served]
backend = "endpoint"
url = "{url}"
model = "tiny"
{extra}

[run]
reference = "local"
timeout = 60

[tolerance]
policy = "exact"
"""


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start test servers in threads (settings as keywords); their URL. Stopped after."""
    servers = []

    def start_one(**settings: object) -> str:
        server, url = start(Settings(**settings))  # type: ignore[arg-type]
        servers.append(server)
        return url

    yield start_one
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., Path]:
    """A project whose adapter is the test server's model; the config for `url`."""

    def write(url: str, extra: str = "", code: str = MODEL_CODE) -> Path:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / "adapter.py").write_text(code)
        cfg = tmp_path / "parity.toml"
        cfg.write_text(CONFIG.format(url=url, extra=extra))
        return cfg

    return write


def check(cfg: Path, *more: str, env: dict[str, str] | None = None) -> tuple[int, str, dict]:
    """`parity check` as a user runs it: exit code, stdout + stderr, the JSON report."""
    out = cfg.parent / "report.json"
    out.unlink(missing_ok=True)
    result = run_cli(
        "parity", "check", "--config", str(cfg), "--json", str(out), *more,
        env={"COLUMNS": "200", **(env or {})}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text()) if out.exists() else {}
    if report:
        assert_valid_report(report)
    return result.returncode, result.stdout + result.stderr, report


def test_binary_tensors_carry_nan_and_infinity_bit_for_bit(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve()
    code, text, report = check(project(url))
    assert code == 0, text
    assert report["verdict"] == "pass"
    assert report["environments"]["served"]["backend"] == "endpoint"
    assert "tensors travel as binary" in text
    # the model writes NaN, inf and -inf for some inputs: compared bitwise, all equal
    y = next(o for o in report["outputs"] if o["name"] == "y")
    assert y["policy"] == "exact" and y["passed"] and y["mismatched"] == 0
    assert y["candidate_shape"] == [23, 3, 4] and y["candidate_dtype"] == "float32"
    # nothing recorded of the endpoint: its versions are unknown, never "none"
    assert report["versions_known"] is False
    assert report["environments"]["served"]["fingerprinted"] is False
    assert "version differences: unknown (served has no fingerprint" in text
    assert "version differences: none" not in text


def test_the_reference_outputs_really_hold_nan_and_infinity(tmp_path: Path) -> None:
    """The round-trip test above is only worth something if the model writes them."""
    from parity.inputs.seeded import ArraySpec, InputSpec, generate

    namespace: dict[str, object] = {}
    exec(MODEL_CODE, namespace)
    x = ArraySpec("x", (3, 4), "float32", "uniform", {}, None)
    spec = InputSpec(seed=7, count=23, arrays=(x,), batch_size=5)
    y = namespace["predict"](generate(spec))["y"]  # type: ignore[operator]
    assert np.isnan(y).any() and np.isposinf(y).any() and np.isneginf(y).any()


def test_json_tensors_round_trip_finite_floats_bit_for_bit(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    from oip_server import FINITE_CODE

    url = serve(binary=False, finite=True)
    code, text, report = check(project(url, code=FINITE_CODE))
    assert code == 0, text
    assert "tensors travel as JSON (no binary tensor data extension" in text
    assert all(o["passed"] for o in report["outputs"])


def test_json_cannot_carry_nan_and_the_check_says_so(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(binary=False, nan_as_null=True)
    code, text, report = check(project(url))
    assert code == 3, text
    assert "environment 'served': batch 0: output 'y': value" in text
    assert "is null, where a number should be: the server wrote NaN or infinity as null" in text
    assert report["verdict"] == "error"


def test_binary_insisted_on_where_the_server_lacks_it_is_a_config_error(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(binary=False)
    code, text, _ = check(project(url, 'binary = "binary"'))
    assert code == 2, text
    assert "environments.served.binary" in text
    assert "does not list the binary_tensor_data extension" in text


def test_a_wrong_model_name_is_a_config_error_naming_what_it_serves(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(model="espcn")
    code, text, _ = check(project(url))
    assert code == 2, text
    assert "environments.served.model" in text
    assert f"the server at {url} has no model 'tiny' (it serves: espcn)" in text


@pytest.mark.parametrize(
    ("declared", "said"),
    [
        ({"name": "x", "datatype": "FP64", "shape": [-1, 3, 4]}, "input 'x' is FP64, the inputs are FP32"),  # noqa: E501
        ({"name": "x", "datatype": "FP32", "shape": [-1, 4, 3]}, "input 'x' has shape [-1, 4, 3], the inputs are [batch, 3, 4]"),  # noqa: E501
        ({"name": "image", "datatype": "FP32", "shape": [-1, 3, 4]}, "no input 'x' (it declares image)"),  # noqa: E501
    ],
)  # fmt: skip
def test_metadata_that_does_not_fit_the_inputs_is_refused_before_sending(
    serve: Callable[..., str], project: Callable[..., Path], declared: dict, said: str
) -> None:
    settings = Settings(inputs=[declared])
    url = serve(inputs=settings.inputs)
    code, text, _ = check(project(url))
    assert code == 2, text
    assert "do not fit model 'tiny'" in text and said in text


def test_a_server_that_is_not_ready_in_time_is_an_environment_error(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(ready_after=60)
    started = time.monotonic()
    code, text, _ = check(project(url, "ready_timeout = 1"))
    assert code == 3, text
    assert f"the server at {url} was not ready within ready_timeout (1s)" in text
    assert time.monotonic() - started < 30


def test_readiness_is_waited_for(serve: Callable[..., str], project: Callable[..., Path]) -> None:
    url = serve(ready_after=1.5)
    code, text, _ = check(project(url, "ready_timeout = 20"))
    assert code == 0, text


def test_a_server_that_is_down_is_an_environment_error(project: Callable[..., Path]) -> None:
    import socket

    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, text, _ = check(project(f"http://127.0.0.1:{port}", "ready_timeout = 1"))
    assert code == 3, text
    assert "was not ready within ready_timeout (1s): no answer" in text


def test_busy_answers_are_retried_with_backoff(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(busy=2)
    code, text, _ = check(project(url, "retries = 3"))
    assert code == 0, text


def test_retries_are_bounded(serve: Callable[..., str], project: Callable[..., Path]) -> None:
    url = serve(busy=100)
    code, text, _ = check(project(url, "retries = 1"))
    assert code == 3, text
    assert "batch 0: the server answered 503 after 2 tries" in text


def test_a_429_is_retried_after_the_seconds_its_retry_after_asks(
    project: Callable[..., Path],
) -> None:
    settings = Settings(busy=1, busy_status=429, retry_after="1.5")
    server, url = start(settings)
    try:
        code, text, _ = check(project(url, "retries = 2"))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, text
    assert settings.answers[:2] == [429, 200]
    # the backoff alone would have tried again after 0.25 s
    assert settings.arrived[1] - settings.arrived[0] >= 1.4


def test_retry_after_is_followed_within_a_bound() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("86400") == MAX_RETRY_AFTER  # a day is not waited for
    assert _retry_after("-5") == 0.0
    assert _retry_after("Wed, 21 Oct 2026 07:28:00 GMT") == 0.0  # a date: the backoff
    assert _retry_after(None) == 0.0


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_a_private_ca_trusted(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _, cert, key = self_signed(certs)
    server, url = start(Settings(), tls=(cert, key))
    assert url.startswith("https://127.0.0.1:")
    try:
        started = time.monotonic()
        code, text, report = check(project(url))
        assert code == 3, text
        assert (
            f"environment 'served': the server: the TLS certificate of {url} did not verify "
            "against the system's CAs (unable to get local issuer certificate)"
        ) in text
        assert 'environments.served.ca_bundle = "path/to/ca.pem"' in text
        assert report["verdict"] == "error"
        assert time.monotonic() - started < 20  # said at once, not waited on (ready_timeout)

        code, text, report = check(project(url, 'ca_bundle = "certs/ca.pem"'))
        assert code == 0, text
        assert report["verdict"] == "pass"

        other = tmp_path / "other"
        other.mkdir()
        self_signed(other)  # another CA: it did not sign the server's certificate
        code, text, _ = check(project(url, 'ca_bundle = "other/ca.pem"'))
        assert code == 3, text
        assert f"did not verify against the CA bundle {other / 'ca.pem'}" in text

        (tmp_path / "junk.pem").write_text("not a certificate\n")
        code, text, _ = check(project(url, 'ca_bundle = "junk.pem"'))
        assert code == 2, text
        assert "environments.served.ca_bundle" in text and "no usable PEM certificates" in text
    finally:
        server.shutdown()
        server.server_close()


def test_a_slow_server_hits_the_request_timeout(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    url = serve(slow=20)
    started = time.monotonic()
    code, text, _ = check(project(url, "request_timeout = 0.5"))
    assert code == 3, text
    assert "batch 0: the server at" in text
    assert "took longer than request_timeout (0.5s) answering" in text
    assert time.monotonic() - started < 15


def test_a_server_killed_mid_replay_ends_the_check_with_exit_3(
    project: Callable[..., Path],
) -> None:
    here = Path(__file__).parent
    server = subprocess.Popen(
        [sys.executable, str(here / "oip_server.py"), json.dumps({"die_after": 3})],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        started = time.monotonic()
        code, text, report = check(project(f"http://127.0.0.1:{port}", "retries = 2"))
        assert code == 3, text
        assert "environment 'served': batch 2: no answer from" in text
        assert "after 3 tries" in text
        assert time.monotonic() - started < 30  # no hang
        assert server.wait(5) == 1  # it did die mid-replay (on its third batch)
        assert report["verdict"] == "error"
    finally:
        server.kill()
        server.wait()


def test_a_failing_local_side_stops_the_endpoint_replay(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    """The local side fails on its first batch; the endpoint, 5 s a batch (25 s for the
    replay), is asked no further batch than the one it is answering."""
    url = serve(slow=5)
    broken = "def predict(inputs):\n    raise RuntimeError('the local side is broken')\n"
    started = time.monotonic()
    code, text, report = check(project(url, code=broken))
    took = time.monotonic() - started
    assert code == 3, text
    assert "[served] stopped: environment 'local' failed first" in text, text
    assert took < 20, f"took {took:.1f}s"
    assert len(report["errors"]) == 2 and "the local side is broken" in report["errors"][0]
    assert report["errors"][1] == "environment 'served': stopped: environment 'local' failed first"


def test_authorization_comes_from_the_variable_named_and_is_never_written(
    serve: Callable[..., str], project: Callable[..., Path], tmp_path: Path
) -> None:
    token = "s3cr3t-t0ken-value-42"
    url = serve(token=token)
    cfg = project(url, '[environments.served.headers]\nAuthorization = "SERVING_CREDENTIALS"')
    code, text, report = check(
        cfg, "--markdown", str(tmp_path / "r.md"), "--workdir", str(tmp_path / "work"),
        env={"SERVING_CREDENTIALS": f"Bearer {token}"},
    )  # fmt: skip
    assert code == 0, text
    written = [text, json.dumps(report), (tmp_path / "r.md").read_text()]
    written += [p.read_text(errors="replace") for p in (tmp_path / "work").rglob("*.json")]
    assert not any(token in w for w in written)

    code, text, _ = check(cfg)  # the variable unset: said, by name, as a config error
    assert code == 2, text
    assert "environments.served.headers.Authorization" in text
    assert "names the environment variable SERVING_CREDENTIALS, which is not set" in text


def test_a_recorded_fingerprint_gives_the_endpoint_its_versions(
    serve: Callable[..., str], project: Callable[..., Path], tmp_path: Path
) -> None:
    # The server here runs in this interpreter, as the local environment does: recorded
    # where it was built, its fingerprint shows the same versions.
    recorded = tmp_path / "served.fingerprint.json"
    done = run_cli(
        "envlock", "fingerprint", "--python", str(BIN / "python"), "--out", str(recorded)
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(recorded.read_text())["distributions"]
    url = serve()
    code, text, report = check(project(url, f'fingerprint = "{recorded}"'))
    assert code == 0, text
    assert report.get("versions_known", True) is True
    assert report["environments"]["served"]["fingerprinted"] is True
    assert report["version_diffs"] == []
    assert "version differences: none" in text


def test_the_lock_an_endpoint_was_built_from_gives_its_versions_from_the_lock_not_observed(
    serve: Callable[..., str], project: Callable[..., Path], tmp_path: Path
) -> None:
    # The server says it was built from the numpy-drift lock's main group (numpy 1.26.4);
    # nothing was recorded of it, so its versions are that lock's pins, said as such.
    lock = ROOT / "examples" / "numpy-drift" / "locks" / "pylock.toml"
    url = serve()
    cfg = project(url, f'lock = "{lock}"\ngroup = "main"')
    code, text, report = check(cfg, "--markdown", str(tmp_path / "r.md"))
    assert code == 1, text  # the outputs agree; numpy's version fails the check
    assert "versions_known" not in report  # absent: known
    said = f"numpy differs: {np.__version__} (local), 1.26.4 (served) [numerics]"
    assert said in report["reasons"]
    served = report["environments"]["served"]
    assert served["versions_from"] == "lock" and served["group"] == "main"
    assert served["packages"]["numpy"] == "1.26.4" and served["packages"]["torch"] == "2.13.0+cpu"
    assert report["environments"]["local"]["versions_from"] == "observed"
    numpy = next(v for v in report["version_diffs"] if v["name"] == "numpy")
    assert numpy["versions"] == {"local": np.__version__, "served": "1.26.4"}
    lock_said = "examples/numpy-drift/locks/pylock.toml, group 'main'"
    assert f"served: from the lock ({lock_said}), not observed" in numpy["note"]
    # a lock knows packages and the interpreter it allows: nothing else is a difference
    packages = {*served["packages"], *report["environments"]["local"]["packages"]}
    assert {v["name"] for v in report["version_diffs"]} <= packages
    markdown = (tmp_path / "r.md").read_text()
    assert "Versions of `served`: from the lock, not observed" in markdown
    assert "from the lock, not observed" in text  # the terminal's table of environments

    # a fingerprint recorded where it was built takes precedence over the lock's pins
    recorded = tmp_path / "served.fingerprint.json"
    done = run_cli(
        "envlock", "fingerprint", "--python", str(BIN / "python"), "--out", str(recorded)
    )
    assert done.returncode == 0, done.stderr
    cfg = project(url, f'lock = "{lock}"\ngroup = "main"\nfingerprint = "{recorded}"')
    code, text, report = check(cfg)
    assert code == 0, text
    assert report["environments"]["served"]["versions_from"] == "recorded"
    assert report["environments"]["served"]["packages"]["numpy"] == np.__version__
    assert not any(v["name"] == "numpy" for v in report["version_diffs"])


@pytest.mark.parametrize(
    ("extra", "key", "said"),
    [
        ('url = "ftp://x"', "url", "must be an http:// or https:// address"),
        ('url = "http://user:pw@127.0.0.1:1"', "url", "without credentials"),
        ('binary = "maybe"', "binary", "must be one of auto, binary, json"),
        ("retries = 99", "retries", "must be from 0 to 20"),
        ("request_timeout = 0", "request_timeout", "must be a positive, finite number"),
        ('fingerprint = "nope.json"', "fingerprint", "file not found: nope.json"),
        ('model_version = "a/b"', "model_version", "must be letters, digits"),
        ('python = "python3"', "python", 'does not apply to backend = "endpoint"'),
        ('[environments.served.headers]\nAuthorization = "Bearer abc"', "headers.Authorization", "must name the environment variable"),  # noqa: E501
    ],
)  # fmt: skip
def test_endpoint_settings_are_checked(
    project: Callable[..., Path], extra: str, key: str, said: str
) -> None:
    cfg = project("http://127.0.0.1:1", extra)
    text = cfg.read_text()
    if extra.startswith("url"):  # replaces the url
        text = text.replace('url = "http://127.0.0.1:1"\n', "")
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert f"environments.served.{key}" in str(e.value) and said in str(e.value)


# -- the encoding on its own ---------------------------------------------------------------

AWKWARD = np.array(
    [0.1, -0.0, 1e-45, 3.4028235e38, np.nextafter(np.float32(1), np.float32(2)), math.pi],
    dtype=np.float32,
)


def test_json_requests_carry_every_float32_exactly() -> None:
    request = json.loads(json_request({"x": AWKWARD.reshape(2, 3)}))
    (t,) = request["inputs"]
    assert t["datatype"] == "FP32" and t["shape"] == [2, 3]
    back = np.array(t["data"], dtype=np.float64).astype(np.float32)
    assert back.tobytes() == AWKWARD.tobytes()  # -0.0 and the subnormal included


def test_json_requests_refuse_nan() -> None:
    with pytest.raises(ValueError):
        json_request({"x": np.array([np.nan], dtype=np.float32)})


def test_binary_requests_and_responses_round_trip_bits() -> None:
    values = np.concatenate([AWKWARD, np.array([np.nan, np.inf, -np.inf], np.float32)])
    body, length = binary_request({"x": values.reshape(3, 3)})
    head = json.loads(body[:length])
    assert head["inputs"][0]["parameters"]["binary_data_size"] == 36
    assert body[length:] == values.astype("<f4").tobytes()
    # the same bytes, as an answer
    answer = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 3],
                           "parameters": {"binary_data_size": 36}}]}  # fmt: skip
    header = json.dumps(answer).encode()
    out = read_response(header + body[length:], str(len(header)))
    assert out["y"].tobytes() == values.tobytes()


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ({"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0, None]}, "value 1 is null"),
        ({"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0, 0.1000000001]}, "is neither a float32 value nor the shortest text of one"),  # noqa: E501
        ({"name": "y", "datatype": "UINT8", "shape": [2], "data": [1, 256]}, "beyond uint8's range"),  # noqa: E501
        ({"name": "y", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0]}, "2 values for a shape of 3"),  # noqa: E501
        ({"name": "y", "datatype": "BYTES", "shape": [1], "data": ["a"]}, "is not a numeric OIP datatype"),  # noqa: E501
        ({"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}, "does not fit"),  # noqa: E501
    ],
)  # fmt: skip
def test_answers_that_cannot_be_read_exactly_are_refused(output: dict, said: str) -> None:
    with pytest.raises(ResponseError, match=None) as e:
        read_response(json.dumps({"outputs": [output]}).encode(), None)
    assert said in str(e.value)


def test_json_floats_written_as_the_shortest_text_of_a_float32_are_read_exactly() -> None:
    values = np.array([0.1, 1 / 3, 1e-45, 3.4028235e38], dtype=np.float32)
    texts = [str(v) for v in values]  # "0.1", "0.33333334", ...: float32's shortest text
    answer = f'{{"outputs": [{{"name": "y", "datatype": "FP32", "shape": [4], "data": [{", ".join(texts)}]}}]}}'  # noqa: E501
    assert read_response(answer.encode(), None)["y"].tobytes() == values.tobytes()


def test_nested_json_data_is_read_row_major() -> None:
    answer = {"outputs": [{"name": "y", "datatype": "INT64", "shape": [2, 2],
                           "data": [[1, 2], [3, 4]]}]}  # fmt: skip
    assert read_response(json.dumps(answer).encode(), None)["y"].tolist() == [[1, 2], [3, 4]]


def test_an_endpoint_is_checked_against_a_golden_bundle(
    serve: Callable[..., str], project: Callable[..., Path], tmp_path: Path
) -> None:
    url = serve()
    cfg = project(url)
    bundle = tmp_path / "golden"
    done = run_cli("parity", "record", "--config", str(cfg), "--env", "local", "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    code, text, report = check(cfg, "--against", str(bundle))
    assert code == 0, text
    assert report["candidate"] == "served" and report["against"]
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert report["versions_known"] is False  # nothing recorded of the endpoint

    other = serve(model="other")  # the endpoint now serves another model
    code, text, _ = check(project(other), "--against", str(bundle))
    assert code == 2, text
    assert "has no model 'tiny' (it serves: other)" in text


def test_a_golden_bundle_fails_an_endpoint_built_from_the_numpy_drift_lock_naming_numpy(
    serve: Callable[..., str], project: Callable[..., Path], tmp_path: Path
) -> None:
    url = serve()
    bundle = tmp_path / "golden"
    cfg = project(url)
    done = run_cli("parity", "record", "--config", str(cfg), "--env", "local", "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    lock = ROOT / "examples" / "numpy-drift" / "locks" / "pylock.toml"
    code, text, report = check(project(url, f'lock = "{lock}"'), "--against", str(bundle))
    assert code == 1, text
    assert report["against"] and report["environments"]["served"]["versions_from"] == "lock"
    assert all(o["passed"] for o in report["outputs"])  # the same model: only numpy differs
    said = f"numpy differs: {np.__version__} (local), 1.26.4 (served) [numerics]"
    assert said in report["reasons"]
    numpy = next(v for v in report["version_diffs"] if v["name"] == "numpy")
    assert "served: from the lock (" in numpy["note"] and "not observed" in numpy["note"]


# -- BentoML's HTTP API (protocol = "bentoml") -----------------------------------------------

BENTO = 'protocol = "bentoml"\noutputs = { y = "float32", n = "int64" }'


def test_a_bentoml_api_passes_exactly(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    from oip_server import FINITE_CODE

    url = serve(bentoml=True, model="predict", finite=True)
    cfg = project(url, BENTO, code=FINITE_CODE)
    cfg.write_text(cfg.read_text().replace('model = "tiny"', 'model = "predict"'))
    code, text, report = check(cfg)
    assert code == 0, text
    assert "API predict ready; tensors travel as JSON" in text
    assert {o["name"]: o["candidate_dtype"] for o in report["outputs"]} == {
        "n": "int64",
        "y": "float32",
    }
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (('model = "predict"', 'model = "nope"'), "has no API 'nope' (it has: predict)"),
        (('n = "int64"', 'n = "bool"'), "batch 0: output 'n': BOOL data that is not true/false"),
        (('n = "int64" }', 'n = "int64", z = "uint8" }'), "the API answered ['n', 'y'], the config names ['n', 'y', 'z']"),  # noqa: E501
    ],
)  # fmt: skip
def test_a_bentoml_api_that_does_not_fit_is_refused(
    serve: Callable[..., str], project: Callable[..., Path], change: tuple[str, str], said: str
) -> None:
    from oip_server import FINITE_CODE

    url = serve(bentoml=True, model="predict", finite=True)
    cfg = project(url, BENTO, code=FINITE_CODE)
    text = cfg.read_text().replace('model = "tiny"', 'model = "predict"')
    cfg.write_text(text.replace(*change))
    code, out, _ = check(cfg)
    assert code in (2, 3), out
    assert said in out


def test_a_bentoml_endpoint_must_name_its_outputs_dtypes(project: Callable[..., Path]) -> None:
    cfg = project("http://127.0.0.1:1", 'protocol = "bentoml"')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    said = str(e.value)
    assert "environments.served.outputs" in said and "do not say their dtypes" in said


def test_an_endpoint_can_be_the_reference(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    cfg = project(serve())
    cfg.write_text(cfg.read_text().replace('reference = "local"', 'reference = "served"'))
    code, text, report = check(cfg, "--calibrate")
    assert code == 0, text
    assert report["reference"] == "served" and report["candidate"] == "local"
    assert report["calibrated"] is True
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert report["versions_known"] is False


def test_localizing_a_failure_says_an_endpoint_runs_no_stages(
    serve: Callable[..., str], project: Callable[..., Path]
) -> None:
    from oip_server import FINITE_CODE

    # the local adapter writes 7, 8, 9 where the server's model writes NaN, inf, -inf
    code = FINITE_CODE + "\n\ndef stages():\n    return [('all', predict)]\n"
    cfg = project(serve(), code=code)
    cfg.write_text(
        cfg.read_text().replace('paths = ["src"]', 'paths = ["src"]\nstages = "adapter:stages"')
    )
    exit_code, text, report = check(cfg, "--localize")
    assert exit_code == 1, text
    assert report["verdict"] == "fail"
    assert "not localized: 'served' runs no scripts (endpoint http://127.0.0.1:" in text
