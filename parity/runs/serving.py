"""Workers that stay up: the model loads once in each environment, then answers many
requests (the worker's serve mode, see `worker.py`), for `parity search`.

`serving` starts one worker per environment, each in a thread running
`Environment.run_python`, and gives a `Session`: `ask(batch)` writes one request file into
the shared requests folder (aside, then renamed, so it appears whole), and waits for both
workers' responses. Whatever happens inside, leaving `serving` writes the `stop` file,
which ends each worker at once, even inside a prediction, and waits for them to exit.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from envlock.backends import RunTimeout
from envlock.progress import Progress
from parity.config import ParityConfig
from parity.errors import WorkerError
from parity.outputs import load_outputs
from parity.runs.job import INPUTS, exited, model_failure, prepare_job
from parity.runs.replay import EnvRun

if TYPE_CHECKING:
    import numpy as np

Arrays = dict[str, "np.ndarray"]

STOP = "stop"  # written into the requests folder: the workers exit
STOP_GRACE = 30.0  # seconds a worker may take to exit after `stop`


@contextmanager
def serving(
    runs: list[EnvRun], config: ParityConfig, work: Path, limit: float, say: Progress
) -> Iterator[Session]:
    """A session with a serving worker in each of the (materialized) environments of
    `runs`, the first the reference; each worker may run `limit` seconds in all. The
    workers are stopped on leaving, whatever happened."""
    servers = [Server(r, config, work, limit) for r in runs]
    session = Session(servers[0], servers[1], work / INPUTS, config.timeout)
    try:
        with _cancel_on_ctrl_c(session.cancelled):
            for s in servers:
                say(f"[{s.name}] serving in {s.description}")
                s.thread.start()
            yield session
            if session.cancelled.is_set():
                raise KeyboardInterrupt
    finally:
        (work / INPUTS / STOP).touch()
        for s in servers:
            if s.thread.ident is not None:
                s.thread.join(STOP_GRACE)
            if s.thread.is_alive():
                say(f"[{s.name}] the worker did not stop within {STOP_GRACE:g}s")


@contextmanager
def _cancel_on_ctrl_c(cancelled: threading.Event) -> Iterator[None]:
    """While serving, the first Ctrl-C sets `cancelled` and the session raises
    KeyboardInterrupt at its next request or wait: raised wherever the main thread happens
    to be, hypothesis's engine could swallow it (a gc callback) or turn it into an internal
    error. A second Ctrl-C raises at once. (Only the main thread can handle signals.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if cancelled.is_set():
            raise KeyboardInterrupt
        cancelled.set()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Server:
    """One environment's worker in serve mode, run by a thread, answering numbered
    requests from the shared requests folder into its own output folder."""

    def __init__(self, run: EnvRun, config: ParityConfig, work: Path, limit: float) -> None:
        assert run.environment is not None
        self.name = run.spec.name
        self.description = run.environment.description
        self.outdir = work / self.name
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.log = self.outdir / "worker.log"
        self.status: int | None = None
        self.failure: BaseException | None = None
        environment = run.environment
        job = prepare_job(
            environment,
            config,
            run.spec.env,
            self.outdir,
            work / INPUTS,
            lambda inside: {
                "mode": "serve",
                "requests": inside["inputs"],
                "stop": f"{inside['inputs']}/{STOP}",
            },
        )

        def serve() -> None:
            try:
                self.status = environment.run_python(
                    job.script,
                    job.args,
                    mounts=job.mounts,
                    env=job.env,
                    log=self.log,
                    timeout=limit,
                )
            except BaseException as e:  # reported by `answer`, in the thread that asks
                self.failure = e

        self.thread = threading.Thread(target=serve, name=f"parity-{self.name}", daemon=True)

    def answer(self, n: int, timeout: float, cancelled: threading.Event) -> Arrays:
        """The outputs the worker gave for request `n`; raise `WorkerError` when the model
        raised on it, the worker died, or no answer came within `timeout` seconds, and
        KeyboardInterrupt once `cancelled` is set."""
        response = self.outdir / f"response-{n}.npz"
        error = self.outdir / f"error-{n}.json"
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            if cancelled.is_set():
                raise KeyboardInterrupt
            if response.exists():
                arrays = {k: v.load() for k, v in load_outputs(response).items()}
                response.unlink()
                return arrays
            failure = model_failure(self.name, error, f"on request {n}")
            if failure is not None:
                raise failure
            if not self.thread.is_alive() and not response.exists():
                raise self._died()
            if time.monotonic() > deadline:
                raise WorkerError(
                    self.name, f"no answer to request {n} within {timeout:g}s (log: {self.log})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _died(self) -> WorkerError:
        """Why the worker is gone, as an error naming its environment."""
        failure = model_failure(self.name, self.outdir / "error.json", "in the worker ({stage})")
        if failure is not None:
            return failure
        if isinstance(self.failure, RunTimeout):
            return WorkerError(self.name, f"worker {self.failure} (log: {self.log})")
        if self.failure is not None:
            return WorkerError(self.name, f"worker could not run: {self.failure}")
        return exited(self.name, self.status, self.log)


class Session:
    """Requests to both workers: one file, written aside then renamed, read by both."""

    def __init__(self, reference: Server, candidate: Server, folder: Path, timeout: float):
        self.reference = reference
        self.candidate = candidate
        self.folder = folder
        self.timeout = timeout
        self.sent = 0
        self.cancelled = threading.Event()  # set by Ctrl-C: the next wait raises

    def ask(self, batch: Arrays) -> tuple[Arrays, Arrays]:
        """The reference's and the candidate's outputs for `batch`."""
        import numpy as np

        if self.cancelled.is_set():
            raise KeyboardInterrupt
        self.sent += 1
        n = self.sent
        tmp = self.folder / f".request-{n}.tmp.npz"
        np.savez(tmp, **batch)  # type: ignore[arg-type]  # numpy stubs mistype **arrays
        request = self.folder / f"request-{n}.npz"
        tmp.replace(request)
        ref = self.reference.answer(n, self.timeout, self.cancelled)
        cand = self.candidate.answer(n, self.timeout, self.cancelled)
        request.unlink()
        if set(ref) != set(cand):
            raise WorkerError(
                self.candidate.name,
                f"the model returned outputs {sorted(cand)}, in {self.reference.name} "
                f"{sorted(ref)}",
            )
        return ref, cand
