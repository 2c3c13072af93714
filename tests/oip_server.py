"""A small but real Open Inference Protocol v2 server for the tests (standard library and
NumPy): REST on 127.0.0.1, a free port, JSON tensors and the binary tensor data extension.

Its model is `MODEL_CODE`'s `predict`, the very code the tests also give a local
environment as its adapter, so a check of the two compares one computation. Settings make
it misbehave as servers do: not ready for a while, busy (503) for a number of requests, slow,
NaN written as JSON's null (as orjson-based servers do), an authorization header required,
metadata that does not fit, or dying in the middle of a replay (`die_after`); busy
answers may carry Retry-After, and it may speak HTTPS (`start(..., tls=...)`, with a
certificate `self_signed` makes).

Run it in a thread (`start`) or as its own process (`python tests/oip_server.py SETTINGS`,
which prints its port), which a test can lose as a server is lost.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

# The model: the server's, and the local environment's adapter (written out as a file).
MODEL_CODE = """\
import numpy as np

def predict(inputs):
    x = np.asarray(inputs["x"], dtype=np.float32)
    y = x * np.float32(2.5) + np.float32(1.0) / np.float32(3.0)
    y = np.where(x > np.float32(0.95), np.float32("nan"), y)
    y = np.where(x < np.float32(0.03), np.float32("inf"), y)
    y = np.where((x >= 0.03) & (x < 0.05), np.float32("-inf"), y)
    return {"y": y.astype(np.float32), "n": (x * 10).astype(np.int64)}
"""
FINITE_CODE = (
    MODEL_CODE.replace('np.float32("nan")', "np.float32(7)")
    .replace('np.float32("inf")', "np.float32(8)")
    .replace('np.float32("-inf")', "np.float32(9)")
)

DTYPES = {"FP32": "float32", "FP64": "float64", "INT64": "int64", "UINT8": "uint8"}
OIP = {v: k for k, v in DTYPES.items()}


@dataclass
class Settings:
    model: str = "tiny"
    bentoml: bool = False  # speak BentoML's HTTP API instead (model: the API's name)
    finite: bool = False  # the model writes 7, 8, 9 where it would write NaN, inf, -inf
    binary: bool = True  # lists and speaks the binary tensor data extension
    nan_as_null: bool = False  # JSON answers write NaN and infinity as null
    inputs: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 4]}]
    )
    ready_after: float = 0.0  # seconds before /v2/health/ready says ready
    busy: int = 0  # the first `busy` inference requests are answered `busy_status`
    busy_status: int = 503  # 503 (unavailable) or 429 (too many requests)
    retry_after: str = ""  # the Retry-After header sent with a busy answer, when set
    slow: float = 0.0  # seconds each inference takes
    die_after: int = 0  # the process exits at once on inference request number die_after
    token: str = ""  # when set, requests need `Authorization: Bearer <token>`
    answers: list[int] = field(default_factory=list)  # status of each inference request
    arrived: list[float] = field(default_factory=list)  # when each arrived (monotonic)


def handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    namespace: dict[str, Any] = {}
    exec(FINITE_CODE if settings.finite else MODEL_CODE, namespace)
    predict = namespace["predict"]
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _authorized(self) -> bool:
            if settings.token and self.headers.get("Authorization") != f"Bearer {settings.token}":
                self._json(401, {"error": "unauthorized"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if settings.bentoml:
                self._bentoml_get()
                return
            model = f"/v2/models/{settings.model}"
            if self.path == "/v2/health/ready":
                ready = time.monotonic() - started >= settings.ready_after
                self._json(200 if ready else 503, {"ready": ready})
            elif self.path == "/v2":
                extensions = ["binary_tensor_data"] if settings.binary else []
                self._json(200, {"name": "oip-test", "version": "1", "extensions": extensions})
            elif self.path == f"{model}/ready":
                self._json(200, {"name": settings.model, "ready": True})
            elif self.path == model:
                outputs = [
                    {"name": "y", "datatype": "FP32", "shape": [-1, 3, 4]},
                    {"name": "n", "datatype": "INT64", "shape": [-1, 3, 4]},
                ]
                self._json(
                    200,
                    {"name": settings.model, "platform": "numpy", "inputs": settings.inputs,
                     "outputs": outputs},
                )  # fmt: skip
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def _bentoml_get(self) -> None:
            if self.path == "/readyz":
                ready = time.monotonic() - started >= settings.ready_after
                self._send(200 if ready else 503, b"ok" if ready else b"starting")
            elif self.path == "/schema.json":
                props = {
                    d["name"]: {"type": "tensor", "format": "numpy-array",
                                "dtype": DTYPES[d["datatype"]], "shape": d["shape"]}
                    for d in settings.inputs
                }  # fmt: skip
                route = {"name": settings.model, "route": f"/{settings.model}",
                         "input": {"properties": props, "required": list(props)}}  # fmt: skip
                self._json(200, {"name": "Tiny", "type": "service", "routes": [route]})
            else:
                self._send(404, b"Not Found")

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if settings.bentoml:
                if self.path != f"/{settings.model}":
                    self._send(404, b"Not Found")
                    return
                inputs = {k: np.array(v, dtype=np.float32) for k, v in json.loads(body).items()}
                outputs = {k: v.tolist() for k, v in predict(inputs).items()}
                self._json(200, outputs)
                return
            if self.path == "/v2/repository/index":
                self._json(200, [{"name": settings.model, "state": "READY"}])
                return
            if self.path != f"/v2/models/{settings.model}/infer":
                self._json(404, {"error": f"model not found: {self.path}"})
                return
            settings.answers.append(0)
            settings.arrived.append(time.monotonic())
            if settings.die_after and len(settings.answers) >= settings.die_after:
                os._exit(1)
            if len(settings.answers) <= settings.busy:
                settings.answers[-1] = settings.busy_status
                later = {"Retry-After": settings.retry_after} if settings.retry_after else {}
                self._send(settings.busy_status, b'{"error": "busy"}',
                           {"Content-Type": "application/json", **later})  # fmt: skip
                return
            time.sleep(settings.slow)
            settings.answers[-1] = 200
            self._infer(body)

        def _infer(self, body: bytes) -> None:
            length = self.headers.get("Inference-Header-Content-Length")
            head = body[: int(length)] if length else body
            request = json.loads(head)
            offset = int(length) if length else 0
            inputs = {}
            for t in request["inputs"]:
                dtype = np.dtype(DTYPES[t["datatype"]])
                size = t.get("parameters", {}).get("binary_data_size")
                if size is not None:
                    inputs[t["name"]] = np.frombuffer(
                        body[offset : offset + size], dtype=dtype.newbyteorder("<")
                    ).reshape(t["shape"])
                    offset += size
                else:
                    inputs[t["name"]] = np.array(t["data"], dtype=dtype).reshape(t["shape"])
            outputs = predict(inputs)
            binary = bool(request.get("parameters", {}).get("binary_data_output"))
            described, data = [], []
            for name, y in outputs.items():
                d: dict[str, Any] = {"name": name, "datatype": OIP[y.dtype.name],
                                     "shape": list(y.shape)}  # fmt: skip
                if binary and settings.binary:
                    raw = y.astype(y.dtype.newbyteorder("<")).tobytes()
                    d["parameters"] = {"binary_data_size": len(raw)}
                    data.append(raw)
                else:
                    values = y.ravel().tolist()
                    if settings.nan_as_null:
                        values = [v if v == v and abs(v) != float("inf") else None for v in values]
                    d["data"] = values
                described.append(d)
            head = json.dumps({"model_name": settings.model, "outputs": described}).encode()
            if data:
                self._send(200, head + b"".join(data),
                           {"Inference-Header-Content-Length": str(len(head)),
                            "Content-Type": "application/octet-stream"})  # fmt: skip
            else:
                self._send(200, head, {"Content-Type": "application/json"})

    return Handler


def start(
    settings: Settings, tls: tuple[Path, Path] | None = None
) -> tuple[ThreadingHTTPServer, str]:
    """Serve `settings` in a daemon thread on 127.0.0.1 (a free port); the server and its
    URL. With `tls` (a certificate and its key, PEM files), over HTTPS. Call
    `server.shutdown()` to stop it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(settings))
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip
CA_USAGES = {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}


def self_signed(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made here and a certificate it signed for 127.0.0.1 (`cryptography`), written
    into `folder` as PEM files: the CA's certificate, the server's certificate and its key.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("parity test CA"))
        .issuer_name(name("parity test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(**{**dict.fromkeys(KEY_USAGES, False), **CA_USAGES}), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


if __name__ == "__main__":
    given = Settings(**json.loads(sys.argv[1])) if len(sys.argv) > 1 else Settings()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(given))
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
