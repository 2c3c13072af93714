"""Replaying the input set through a serving endpoint (`backend = "endpoint"`): the host
speaks the Open Inference Protocol v2 over REST to a running model server and writes what
it answers as a worker writes its outputs (`outputs.npz`, `result.json`, and the
endpoint's recorded `fingerprint.json` when there is one), so judging and reports read an
endpoint's replay as any other.

Before the first request: the server and the model must be ready (waited for, within
`ready_timeout`), and the model's metadata must fit the input spec (names, datatypes,
shapes), else the check stops with a `ConfigError` (exit 2). A server that does not answer
is a `WorkerError` (exit 3).

Numbers travel bit for bit: with the binary tensor data extension (the raw little-endian
bytes after the JSON header, `Inference-Header-Content-Length`) where the server lists it
(`binary = "auto"`) or always (`"binary"`); as JSON otherwise, where a float is written as
the shortest text that reads back as the same double, and what JSON cannot carry (NaN,
infinity) is refused with a message saying so, never converted.

Authorization headers are read from the environment variables the config names; their
values are declared secret (redacted from whatever parity writes) and never put in a
message.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from envlock.backends import Cancelled
from envlock.backends.endpoint import EndpointEnvironment
from envlock.envvars import declare_secret_values
from envlock.progress import Progress
from parity.config import ParityConfig
from parity.errors import ConfigError, WorkerError
from parity.runs.job import ABORT, INPUTS, INPUTS_FILE

if TYPE_CHECKING:
    import httpx
    import numpy as np

# OIP datatypes and the NumPy dtypes they carry (little-endian in the binary extension).
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
DATATYPE_OF = {v: k for k, v in DATATYPES.items()}
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
RETRY_STATUSES = (429, 503)
MAX_BACKOFF = 8.0  # seconds between two tries, at most
MAX_RETRY_AFTER = 30.0  # a server's Retry-After is followed up to this
MAX_RESPONSE_BYTES = 2 << 30  # one answer, at most
MAX_METADATA_BYTES = 16 << 20
MAX_SHOWN = 300  # characters of a server's error text in a message


def replay_endpoint(
    name: str,
    endpoint: EndpointEnvironment,
    config: ParityConfig,
    outdir: Path,
    say: Progress,
    cancelled: Callable[[], bool] | None = None,
) -> str | None:
    """Replay the inputs file (in `outdir.parent / INPUTS`, waited for) through `endpoint`
    batch by batch; write `outputs.npz` and `result.json` into `outdir`, and the endpoint's
    recorded fingerprint as `fingerprint.json` when it has one. The server's name, as its
    metadata gives it (`mlserver`), if it does. Raise `Cancelled` once `cancelled()` is
    true, asked before each batch."""
    import numpy as np

    outdir.mkdir(parents=True, exist_ok=True)
    kind = BentoClient if endpoint.protocol == "bentoml" else OipClient
    client = kind(name, endpoint, config.path, say)
    t0 = time.perf_counter()
    with client.session():
        client.wait_until_ready()
        metadata = client.model_metadata()
        inputs = _wait_for_inputs(name, outdir.parent / INPUTS, config.timeout)
        client.check_inputs(metadata, inputs)
        t1 = time.perf_counter()
        outputs: dict[str, list[np.ndarray]] = {}
        count = len(next(iter(inputs.values())))
        batch = config.inputs.batch_size
        for n, start in enumerate(range(0, count, batch)):
            if cancelled is not None and cancelled():
                raise Cancelled(f"{endpoint.description}: cancelled before batch {n}")
            answer = client.infer({k: v[start : start + batch] for k, v in inputs.items()}, n)
            if outputs and set(answer) != set(outputs):
                raise WorkerError(
                    name,
                    f"batch {n}: the server answered outputs {sorted(answer)}, before "
                    f"{sorted(outputs)}",
                )
            for k, v in answer.items():
                outputs.setdefault(k, []).append(v)
        t2 = time.perf_counter()
    tmp = outdir / ".outputs.tmp.npz"
    np.savez(tmp, **{k: np.concatenate(v) for k, v in outputs.items()})  # type: ignore[arg-type]
    tmp.replace(outdir / "outputs.npz")
    if endpoint.fingerprint is not None:
        (outdir / "fingerprint.json").write_bytes(endpoint.fingerprint.read_bytes())
    result = {"seconds": {"load": round(t1 - t0, 3), "predict": round(t2 - t1, 3)}}
    (outdir / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return client.server


def _wait_for_inputs(name: str, folder: Path, timeout: float) -> dict[str, np.ndarray]:
    """The input set the host writes into `folder` (it appears whole); raise
    `WorkerError` when the host gave up or it did not appear within `timeout`."""
    import numpy as np

    deadline = time.monotonic() + timeout
    while not (folder / INPUTS_FILE).exists():
        if (folder / ABORT).exists():
            raise WorkerError(name, "the host gave up before writing the inputs")
        if time.monotonic() > deadline:
            raise WorkerError(name, f"the inputs were not written within {timeout:g}s")
        time.sleep(0.01)
    with np.load(folder / INPUTS_FILE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class OipClient:
    """One endpoint's conversation in the Open Inference Protocol v2 (REST)."""

    def __init__(
        self, name: str, endpoint: EndpointEnvironment, config_path: Path, say: Progress
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.config_path = config_path
        self.say = say
        self.key = f"environments.{name}"
        model = f"/v2/models/{quote(endpoint.model, safe='')}"
        if endpoint.model_version:
            model += f"/versions/{quote(endpoint.model_version, safe='')}"
        self.model_path = model
        self.binary = endpoint.binary == "binary"
        self.server: str | None = None  # the server's name, from its metadata
        self._client: httpx.Client | None = None

    # -- the connection -------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """The configured headers, each read from its environment variable (and declared
        secret); raise `ConfigError` naming a variable that is not set."""
        headers = {}
        for header, variable in self.endpoint.headers.items():
            value = os.environ.get(variable)
            if value is None:
                raise ConfigError(
                    self.config_path,
                    f"{self.key}.headers.{header}",
                    f"names the environment variable {variable}, which is not set",
                )
            headers[header] = value
        declare_secret_values(headers.values())
        return headers

    @contextmanager
    def session(self) -> Iterator[None]:
        """The HTTP client, open while the block runs."""
        try:
            import httpx
        except ImportError:
            raise WorkerError(
                self.name,
                "the endpoint backend needs httpx: pip install 'envlock-parity[endpoint]'",
            ) from None
        verify: bool | ssl.SSLContext = self.endpoint.verify
        if self.endpoint.verify and self.endpoint.ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self.endpoint.ca_bundle))
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(
                    self.config_path,
                    f"{self.key}.ca_bundle",
                    f"{self.endpoint.ca_bundle} holds no usable PEM certificates ({_reason(e)})",
                ) from None
        timeout = self.endpoint.request_timeout
        self._client = httpx.Client(
            base_url=self.endpoint.url,
            headers=self._headers(),
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,  # headers go to the server named, nowhere else
            trust_env=False,  # no proxy from the environment sees the headers
        )
        try:
            yield
        finally:
            self._client.close()
            self._client = None

    def _request(
        self, method: str, path: str, what: str, *, retry: bool = True, **kwargs: Any
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request, tried again with backoff on 429, 503 or no connection (at most
        `retries` more times); its status, headers and body (at most `MAX_RESPONSE_BYTES`).
        Raise `WorkerError` when the server cannot be reached or takes longer than the
        request timeout."""
        import httpx

        assert self._client is not None
        tries = 1 + (self.endpoint.retries if retry else 0)
        problem = ""
        for attempt in range(tries):
            wait = min(MAX_BACKOFF, 0.25 * 2**attempt)
            try:
                with self._client.stream(method, path, **kwargs) as response:
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                        raise WorkerError(self.name, f"{what}: {_too_big(int(declared))}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise WorkerError(self.name, f"{what}: {_too_big(len(body))}")
                    if response.status_code not in RETRY_STATUSES:
                        return response.status_code, response.headers, bytes(body)
                    problem = f"the server answered {response.status_code}"
                    wait = max(wait, _retry_after(response.headers.get("retry-after")))
            except httpx.TimeoutException as e:
                kind = "connecting" if isinstance(e, httpx.ConnectTimeout) else "answering"
                raise WorkerError(
                    self.name,
                    f"{what}: the server at {self.endpoint.url} took longer than "
                    f"request_timeout ({self.endpoint.request_timeout:g}s) {kind}",
                ) from None
            except httpx.TransportError as e:
                self._refuse_certificate(e, what)
                problem = f"no answer from {self.endpoint.url} ({_reason(e)})"
            if attempt + 1 < tries:
                time.sleep(wait)
        more = f" after {tries} tries" if tries > 1 else ""
        raise WorkerError(self.name, f"{what}: {problem}{more}")

    def _json(self, status: int, body: bytes, what: str) -> Any:
        """The JSON of an answer; raise `WorkerError` when it is not JSON."""
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise WorkerError(
                self.name, f"{what}: the server answered {status} with text that is not JSON"
            ) from None

    def _wait_for(
        self,
        path: str,
        what: str,
        deadline: float,
        *,
        missing: Callable[[httpx.Response], Exception] | None = None,
    ) -> None:
        """Ask `GET path` until it answers 200 saying ready, backing off from 50 ms to 1 s;
        raise `WorkerError` naming `what` once `deadline` (monotonic) passes, the error
        `missing` makes of a 404 when given, and at once for a certificate that does not
        verify (waiting does not mend it)."""
        import httpx

        assert self._client is not None
        delay, last = 0.05, ""
        while True:
            try:
                response = self._client.get(path)
                if response.status_code == 200 and _ready(response):
                    return
                if response.status_code == 404 and missing is not None:
                    raise missing(response)
                last = f"{path} answered {response.status_code}"
            except httpx.TransportError as e:
                self._refuse_certificate(e, what)
                last = f"no answer ({_reason(e)})"
            if time.monotonic() + delay > deadline:
                raise WorkerError(
                    self.name,
                    f"{what} at {self.endpoint.url} was not ready within ready_timeout "
                    f"({self.endpoint.ready_timeout:g}s): {last}",
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _refuse_certificate(self, e: Exception, what: str) -> None:
        """Raise `WorkerError` when `e` is a TLS certificate that did not verify, saying
        why and how to trust the server's CA."""
        problem = _certificate_problem(e)
        if problem is None:
            return
        trusted = (
            f"the CA bundle {self.endpoint.ca_bundle}"
            if self.endpoint.ca_bundle is not None
            else "the system's CAs"
        )
        raise WorkerError(
            self.name,
            f"{what}: the TLS certificate of {self.endpoint.url} did not verify against "
            f"{trusted} ({problem}); to trust a private CA, name its PEM file as "
            f'{self.key}.ca_bundle = "path/to/ca.pem"',
        )

    def _send(
        self, path: str, what: str, content: bytes, headers: Mapping[str, str]
    ) -> tuple[Mapping[str, str], bytes]:
        """POST `content` to `path` (retried as `_request` retries); the answer's headers
        and body. Raise `WorkerError` for any answer but 200, with the server's text."""
        status, answer_headers, body = self._request(
            "POST", path, what, content=content, headers=headers
        )
        if status != 200:
            raise WorkerError(self.name, f"{what}: the server answered {status}: {_shown(body)}")
        return answer_headers, body

    # -- before the first request ---------------------------------------------------------

    def wait_until_ready(self) -> None:
        """Wait (at most `ready_timeout`) for the server and then the model to say they
        are ready; raise `WorkerError` (the server down or never ready) or `ConfigError`
        (it has no such model)."""
        deadline = time.monotonic() + self.endpoint.ready_timeout
        self.say(f"waiting for {self.endpoint.url} to be ready")
        self._wait_for("/v2/health/ready", "the server", deadline)
        self._wait_for(
            f"{self.model_path}/ready",
            f"model {self.endpoint.model!r}",
            deadline,
            missing=self._no_such_model,
        )
        extensions = self._server_extensions()
        if self.endpoint.binary == "auto":
            self.binary = BINARY_EXTENSION in extensions
        elif self.binary and BINARY_EXTENSION not in extensions:
            raise ConfigError(
                self.config_path,
                f"{self.key}.binary",
                f'"binary" but the server at {self.endpoint.url} does not list the '
                f"{BINARY_EXTENSION} extension (its extensions: "
                f"{', '.join(extensions) or 'none'})",
            )
        how = (
            "binary (the binary tensor data extension)"
            if self.binary
            else "JSON (no binary tensor data extension: NaN and infinity cannot be carried)"
        )
        self.say(f"model {self.endpoint.model} ready; tensors travel as {how}")

    def _server_extensions(self) -> list[str]:
        """The extensions the server's metadata (GET /v2) lists."""
        status, _, body = self._request("GET", "/v2", "the server's metadata")
        if status != 200:
            return []
        data = self._json(status, body[:MAX_METADATA_BYTES], "the server's metadata")
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            self.server = data["name"][:100]
            self.say(f"server: {self.server} {str(data.get('version'))[:40]}")
        extensions = data.get("extensions") if isinstance(data, dict) else None
        return [str(e) for e in extensions] if isinstance(extensions, list) else []

    def _no_such_model(self, response: httpx.Response) -> ConfigError:
        """The error for a model the server does not have (naming those it has, if it
        says)."""
        known = ""
        try:
            index = self._client.post("/v2/repository/index", json={}) if self._client else None
            names = [m["name"] for m in index.json()] if index and index.status_code == 200 else []
            if names:
                known = f" (it serves: {', '.join(sorted(map(str, names)))})"
        except Exception:  # the index is an extension; without it the message says less
            pass
        version = f" version {self.endpoint.model_version!r}" if self.endpoint.model_version else ""
        return ConfigError(
            self.config_path,
            f"{self.key}.model",
            f"the server at {self.endpoint.url} has no model {self.endpoint.model!r}"
            f"{version}{known}",
        )

    def model_metadata(self) -> dict[str, Any]:
        """The model's metadata (GET /v2/models/{name}[/versions/{v}])."""
        status, _, body = self._request("GET", self.model_path, "the model's metadata")
        if status == 404:
            raise ConfigError(
                self.config_path,
                f"{self.key}.model",
                f"the server at {self.endpoint.url} has no model {self.endpoint.model!r}",
            )
        if status != 200:
            raise WorkerError(
                self.name, f"the model's metadata: the server answered {status}: {_shown(body)}"
            )
        data = self._json(status, body[:MAX_METADATA_BYTES], "the model's metadata")
        if not isinstance(data, dict):
            raise WorkerError(self.name, "the model's metadata is not a JSON object")
        return data

    def check_inputs(self, metadata: dict[str, Any], inputs: Mapping[str, np.ndarray]) -> None:
        """Raise `ConfigError` unless the model's declared inputs fit the input set: the
        same names, each input's datatype, and its shape (a batch of samples; -1 fits any
        size). A model that declares no inputs is said, not refused."""
        declared = metadata.get("inputs")
        if not isinstance(declared, list) or not declared:
            self.say(
                f"model {self.endpoint.model} declares no inputs in its metadata: names, "
                "shapes and datatypes not checked before sending"
            )
            return
        problems = []
        by_name = {d.get("name"): d for d in declared if isinstance(d, dict)}
        for name, array in inputs.items():
            d = by_name.get(name)
            if d is None:
                problems.append(f"no input {name!r} (it declares {', '.join(map(str, by_name))})")
                continue
            want = DATATYPE_OF.get(array.dtype.name)
            if d.get("datatype") != want:
                problems.append(f"input {name!r} is {d.get('datatype')}, the inputs are {want}")
            shape = d.get("shape")
            sample = list(array.shape[1:])
            if not _fits(shape, sample):
                problems.append(
                    f"input {name!r} has shape {shape}, the inputs are [batch, "
                    f"{', '.join(map(str, sample))}]"
                )
        for wanted in by_name:
            if wanted not in inputs:
                problems.append(f"it needs input {wanted!r}, which the input set lacks")
        if problems:
            raise ConfigError(
                self.config_path,
                "inputs",
                f"do not fit model {self.endpoint.model!r} at {self.endpoint.url} "
                f"({self.name}): " + "; ".join(problems),
            )

    # -- requests ---------------------------------------------------------------------------

    def infer(self, batch: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The model's outputs for one batch (batch number `n`, for messages)."""
        what = f"batch {n}"
        headers = {}
        if self.binary:
            try:
                content, length = binary_request(batch)
            except ResponseError as e:
                raise WorkerError(self.name, f"{what}: {e}") from None
            headers = {
                HEADER_LENGTH: str(length),
                "Content-Type": "application/octet-stream",
            }
        else:
            content = self._json_request(batch, n)
            headers = {"Content-Type": "application/json"}
        answer_headers, body = self._send(f"{self.model_path}/infer", what, content, headers)
        try:
            outputs = read_response(body, answer_headers.get(HEADER_LENGTH))
        except ResponseError as e:
            raise WorkerError(self.name, f"{what}: {e}") from None
        rows = len(next(iter(batch.values())))
        for k, v in outputs.items():
            if v.ndim == 0 or v.shape[0] != rows:
                raise WorkerError(
                    self.name,
                    f"{what}: output {k!r} has shape {list(v.shape)}, not a batch of {rows}",
                )
        return outputs

    def _json_request(self, batch: Mapping[str, np.ndarray], n: int) -> bytes:
        """The request as plain JSON; raise `ConfigError` for a value JSON cannot carry."""
        self._refuse_non_finite(batch, n)
        try:
            return json_request(batch)
        except ResponseError as e:
            raise WorkerError(self.name, f"batch {n}: {e}") from None

    def _refuse_non_finite(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        """Raise `ConfigError` for a NaN or infinity in `batch`: JSON cannot carry them."""
        import numpy as np

        for name, array in batch.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(1))[0])
                raise ConfigError(
                    self.config_path,
                    f"{self.key}.binary",
                    f"input {name!r} holds NaN or infinity (batch {n}, sample {bad}), which "
                    f"JSON cannot carry, and the server does not take binary tensor data: "
                    f"these inputs cannot be sent to {self.endpoint.url} as they are",
                )


class BentoClient(OipClient):
    """One endpoint's conversation in BentoML's HTTP API: `model` names the API (its
    route), readiness is `GET /readyz`, the metadata `GET /schema.json` (each input's
    dtype and shape; outputs' dtypes come from the config), tensors travel as nested JSON
    lists (BentoML has no binary tensor encoding over HTTP)."""

    def wait_until_ready(self) -> None:
        """Wait (at most `ready_timeout`) for `GET /readyz` to answer 200."""
        deadline = time.monotonic() + self.endpoint.ready_timeout
        self.say(f"waiting for {self.endpoint.url} to be ready")
        self._wait_for("/readyz", "the server", deadline)
        self.binary = False
        self.server = "bentoml"
        self.say(
            f"API {self.endpoint.model} ready; tensors travel as JSON (BentoML's HTTP API: "
            "NaN and infinity cannot be carried)"
        )

    def model_metadata(self) -> dict[str, Any]:
        """The API's route in the service's schema (`GET /schema.json`)."""
        status, _, body = self._request("GET", "/schema.json", "the service's schema")
        if status != 200:
            raise WorkerError(self.name, f"the service's schema: the server answered {status}")
        data = self._json(status, body[:MAX_METADATA_BYTES], "the service's schema")
        routes = data.get("routes") if isinstance(data, dict) else None
        routes = [r for r in routes if isinstance(r, dict)] if isinstance(routes, list) else []
        for route in routes:
            if route.get("name") == self.endpoint.model:
                self.model_path = str(route.get("route") or f"/{self.endpoint.model}")
                found: dict[str, Any] = route
                return found
        names = ", ".join(str(r.get("name")) for r in routes) or "none"
        raise ConfigError(
            self.config_path,
            f"{self.key}.model",
            f"the service at {self.endpoint.url} has no API {self.endpoint.model!r} (it has: "
            f"{names})",
        )

    def check_inputs(self, metadata: dict[str, Any], inputs: Mapping[str, np.ndarray]) -> None:
        """Raise `ConfigError` unless the API's inputs fit the input set: the same names,
        and each tensor input's dtype and shape where the schema gives them."""
        schema = metadata.get("input")
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict) or not props:
            self.say(f"API {self.endpoint.model} declares no inputs: nothing checked")
            return
        required = schema.get("required") if isinstance(schema, dict) else None
        problems = []
        for name, array in inputs.items():
            p = props.get(name)
            if not isinstance(p, dict):
                problems.append(f"no input {name!r} (it takes {', '.join(map(str, props))})")
                continue
            if p.get("dtype") not in (None, array.dtype.name):
                problems.append(f"input {name!r} is {p.get('dtype')}, the inputs are {array.dtype}")
            shape = p.get("shape")
            if shape is not None and not _fits(shape, list(array.shape[1:])):
                problems.append(
                    f"input {name!r} has shape {shape}, the inputs are [batch, "
                    f"{', '.join(map(str, array.shape[1:]))}]"
                )
        for wanted in required if isinstance(required, list) else []:
            if wanted not in inputs:
                problems.append(f"it needs input {wanted!r}, which the input set lacks")
        if problems:
            raise ConfigError(
                self.config_path,
                "inputs",
                f"do not fit API {self.endpoint.model!r} at {self.endpoint.url} "
                f"({self.name}): " + "; ".join(problems),
            )

    def infer(self, batch: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The API's outputs for one batch, each read as the dtype the config names."""
        import numpy as np

        what = f"batch {n}"
        self._refuse_non_finite(batch, n)
        content = json.dumps({k: v.tolist() for k, v in batch.items()}, allow_nan=False)
        _, body = self._send(
            self.model_path, what, content.encode(), {"Content-Type": "application/json"}
        )
        data = self._json(200, body, what)
        wanted = self.endpoint.outputs
        if not isinstance(data, dict) or set(data) != set(wanted):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise WorkerError(
                self.name, f"{what}: the API answered {got}, the config names {sorted(wanted)}"
            )
        outputs = {}
        rows = len(next(iter(batch.values())))
        for k, dtype in wanted.items():
            try:
                shape = _nested_shape(data[k])
                array = _from_json(k, data[k], np.dtype(dtype), math.prod(shape))
            except ResponseError as e:
                raise WorkerError(self.name, f"{what}: {e}") from None
            if not shape or shape[0] != rows:
                raise WorkerError(
                    self.name, f"{what}: output {k!r} has shape {shape}, not a batch of {rows}"
                )
            outputs[k] = array.reshape(shape)
        return outputs


def _nested_shape(data: Any) -> list[int]:
    """The shape of a nested JSON list (by its first elements; `_from_json` then checks
    the count of values against it)."""
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if len(shape) > 32:
            raise ResponseError("nested more than 32 levels")
        data = data[0] if data else None
    if not shape:
        raise ResponseError("a value where a list of numbers should be")
    return shape


# -- encoding and decoding (no connection: tested on their own) ----------------------------


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = DATATYPE_OF.get(array.dtype.name)
    if datatype is None:
        raise ResponseError(f"input {name!r}: {array.dtype} has no OIP datatype")
    return {"name": name, "shape": list(array.shape), "datatype": datatype}


def json_request(batch: Mapping[str, np.ndarray]) -> bytes:
    """An inference request with every tensor's data in the JSON (row-major, flat).
    Python writes each float as the shortest text that reads back as the same double
    (a float32 value is exactly a double), so it arrives bit for bit."""
    inputs = [{**_tensor(k, v), "data": v.ravel().tolist()} for k, v in batch.items()]
    return json.dumps({"inputs": inputs}, allow_nan=False).encode()


def binary_request(batch: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """An inference request with every tensor's raw little-endian bytes after the JSON
    header (the binary tensor data extension), outputs asked for the same way; the body
    and the header's length."""
    import numpy as np

    inputs, data = [], []
    for k, v in batch.items():
        raw = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes()
        inputs.append({**_tensor(k, v), "parameters": {"binary_data_size": len(raw)}})
        data.append(raw)
    header = json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True}}, allow_nan=False
    ).encode()
    return header + b"".join(data), len(header)


class ResponseError(ValueError):
    """An answer (or a request) that does not hold what the protocol says it must."""


def read_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of an inference response, JSON or with binary tensor data after a JSON
    header of `header_length` bytes. Raise `ResponseError` for an answer that is not what it
    declares, and for a value JSON could not carry (a null where a number should be: a
    server that wrote NaN or infinity as null)."""
    import numpy as np

    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ResponseError(f"{HEADER_LENGTH} {header_length[:40]!r} does not fit the body")
        head, rest = body[: int(header_length)], memoryview(body)[int(header_length) :]
    else:
        head, rest = body, memoryview(b"")
    try:
        data = json.loads(head)
    except (ValueError, RecursionError):
        raise ResponseError("the answer is not JSON") from None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ResponseError("the answer has no outputs")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for o in outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise ResponseError("an output without a name")
        name = o["name"]
        datatype, shape = o.get("datatype"), o.get("shape")
        if datatype not in DATATYPES:
            raise ResponseError(
                f"output {name!r}: datatype {str(datatype)[:40]!r} is not a numeric OIP "
                f"datatype ({', '.join(DATATYPES)})"
            )
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or len(shape) > 32
        ):
            raise ResponseError(f"output {name!r}: shape {str(shape)[:60]} is not a shape")
        if name in arrays:
            raise ResponseError(f"output {name!r} twice")
        dtype = np.dtype(DATATYPES[datatype])
        size = math.prod(shape)
        given = o.get("parameters")
        params: dict[str, Any] = given if isinstance(given, dict) else {}
        if "binary_data_size" in params:
            n = params["binary_data_size"]
            if not isinstance(n, int) or n != size * dtype.itemsize or offset + n > len(rest):
                raise ResponseError(
                    f"output {name!r}: binary_data_size {str(n)[:20]} does not fit its shape "
                    f"{shape} of {datatype} or the body"
                )
            chunk = rest[offset : offset + n]
            offset += n
            array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)
        else:
            array = _from_json(name, o.get("data"), dtype, size)
        arrays[name] = array.reshape(shape)
    if offset != len(rest):
        raise ResponseError(f"{len(rest) - offset} bytes of binary data no output declares")
    return arrays


def _from_json(name: str, data: Any, dtype: np.dtype[Any], size: int) -> np.ndarray:
    """One output's JSON data as `dtype`, exactly; raise for anything it cannot be."""
    import numpy as np

    if not isinstance(data, list):
        raise ResponseError(f"output {name!r}: no data")
    flat = _flatten(data)
    if len(flat) != size:
        raise ResponseError(f"output {name!r}: {len(flat)} values for a shape of {size}")
    if any(v is None for v in flat):
        first = flat.index(None)
        raise ResponseError(
            f"output {name!r}: value {first} is null, where a number should be: the server "
            f"wrote NaN or infinity as null (JSON has neither); the outputs cannot be "
            f"compared as they are: serve them with the binary tensor data extension"
        )
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            raise ResponseError(f"output {name!r}: BOOL data that is not true/false")
        return np.array(flat, dtype=dtype)
    if dtype.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise ResponseError(f"output {name!r}: {dtype} data that is not all integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise ResponseError(f"output {name!r}: values beyond {dtype}'s range")
        return np.array(flat, dtype=dtype)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise ResponseError(f"output {name!r}: {dtype} data that is not all numbers")
    wide = np.array(flat, dtype=np.float64)
    narrow = wide.astype(dtype)
    # Each number must be exactly a value of the datatype (a float32 written as the double
    # it is) or the shortest text of one (`0.1` for float32's 0.1): anything else was
    # rounded on the way, and which value it stood for is not known.
    inexact = np.flatnonzero(np.isfinite(wide) & (narrow.astype(np.float64) != wide))
    for i in inexact:
        if float(str(narrow[i])) != wide[i]:
            raise ResponseError(
                f"output {name!r}: value {int(i)} ({flat[i]!r}) is neither a {dtype} value nor "
                f"the shortest text of one: the server wrote it rounded"
            )
    return narrow


def _flatten(data: list[Any]) -> list[Any]:
    """A nested list's leaves in row-major order (iteratively)."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    todo = [iter(data)]
    while todo:
        for v in todo[-1]:
            if isinstance(v, list):
                todo.append(iter(v))
                break
            flat.append(v)
        else:
            todo.pop()
    return flat


def _fits(declared: Any, sample: list[int]) -> bool:
    """Whether a declared shape fits a batch of samples of shape `sample` (-1: any)."""
    if not isinstance(declared, list) or len(declared) != len(sample) + 1:
        return False
    return all(
        isinstance(d, int) and (d == -1 or d == s)
        for d, s in zip(declared, [declared[0] if declared else -1, *sample], strict=True)
    )


def _ready(response: httpx.Response) -> bool:
    """Whether a 200 answer to a readiness probe says ready (a body saying `"ready":
    false` does not; an empty body does)."""
    try:
        data = response.json()
    except ValueError:
        return True
    return not (isinstance(data, dict) and data.get("ready") is False)


def _retry_after(value: str | None) -> float:
    """A Retry-After header's seconds (bounded), 0 for none or a date."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


def _certificate_problem(e: BaseException) -> str | None:
    """Why a TLS certificate did not verify, if that is what `e` (or what it wraps) is."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)[:MAX_SHOWN]
        cause = cause.__cause__ or cause.__context__
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip()[:MAX_SHOWN]
    return None


def _reason(e: Exception) -> str:
    """Why a connection failed, in a few words."""
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:MAX_SHOWN]


def _shown(body: bytes) -> str:
    """A server's error text for a message: its `error` field or its first characters."""
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, str):
            return error[:MAX_SHOWN]
    except (ValueError, RecursionError):
        pass
    text = body[:MAX_SHOWN].decode("utf-8", "replace").strip()
    return text or "(no text)"


def _too_big(n: int) -> str:
    return f"an answer of {n} bytes, over the limit of {MAX_RESPONSE_BYTES}"
