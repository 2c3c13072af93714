"""Images from one lock, and parity inside them: real Docker, real builds, real containers.

Skipped, with the reason, where no Docker daemon answers; CI sets PARITY_REQUIRE_DOCKER=1
so that there a missing daemon fails instead.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    BIN,
    ROOT,
    assert_valid_report,
    failures,
    lock_tiny_spec,
    parity_check,
    run_cli,
    same_figures,
)
from raycluster import LocalRayCluster

from envlock import probe, read_lock
from envlock.fetch import fetch
from envlock.images import compare_trees
from parity.runs import worker

pytestmark = pytest.mark.slow
LOCAL_BASE = os.environ.get("ENVLOCK_TEST_BASE", "envlock/local-base:bookworm")


def _client_or_skip() -> Any:
    from envlock.backends.docker import DockerUnavailable, docker_client

    try:
        return docker_client()
    except DockerUnavailable as e:
        if os.environ.get("PARITY_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PARITY_REQUIRE_DOCKER=1 but {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def client() -> Any:
    client = _client_or_skip()
    try:
        client.images.get(LOCAL_BASE)
    except Exception:
        made = subprocess.run(
            [str(ROOT / "scripts" / "make-local-base.sh"), LOCAL_BASE],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            pytest.fail(f"could not make the local base image:\n{made.stderr}")
    return client


def build(
    lock: str, pins: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "envlock",
        "build",
        "--base",
        LOCAL_BASE,
        "--lock",
        lock,
        "--pins",
        str(pins),
        "--json",
        *extra,
        env=env,
        timeout=1200,
    )


@pytest.fixture(scope="session")
def reference_build(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pins = tmp_path_factory.mktemp("pins") / "base-images.toml"
    result = build("locks/pylock.toml", pins)
    assert result.returncode == 0, result.stderr
    return {"result": json.loads(result.stdout), "pins": pins}


@pytest.fixture(scope="session")
def drift_build(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pins = tmp_path_factory.mktemp("pins") / "base-images.toml"
    result = build("examples/numpy-drift/locks/pylock.toml", pins)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fresh_build(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both reference images built together under a repository of their own (no tag reuse)."""
    repo = f"envlock/test-shared-{os.getpid()}"
    pins = tmp_path_factory.mktemp("pins") / "base-images.toml"
    result = build("locks/pylock.toml", pins, "--repo", repo)
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    yield built
    for image in built["images"].values():
        client.images.remove(image["tag"])


def test_reference_build_proves_the_shared_environment_identical(
    reference_build: dict[str, Any],
) -> None:
    # However the tags were made (shared layers, or --no-cache), the proof must hold.
    proof = reference_build["result"]["proof"]
    assert proof["identical"] is True and proof["method"] in ("layers", "trees")
    assert proof["differences"] == []


def test_both_images_build_from_one_lock_and_share_the_environment(
    client: Any, fresh_build: dict[str, Any]
) -> None:
    result = fresh_build
    lock = read_lock(ROOT / "locks" / "pylock.toml")
    digest12 = lock.digest.removeprefix("sha256:")[:12]
    train, infer = result["images"]["train"], result["images"]["infer"]
    assert train["tag"].endswith(f":train-{digest12}") and infer["tag"].endswith(
        f":infer-{digest12}"
    )
    assert (train["group"], infer["group"]) == ("train", "main")
    assert result["proof"]["method"] == "layers" and result["proof"]["identical"] is True
    base_layers = client.images.get(LOCAL_BASE).attrs["RootFS"]["Layers"]
    # The inference image is the base plus one layer (the venv); the training image is
    # exactly those layers, the same digests, plus one (the training-only files).
    assert infer["layers"][: len(base_layers)] == base_layers
    assert len(infer["layers"]) == len(base_layers) + 1
    assert train["layers"][: len(infer["layers"])] == infer["layers"]
    assert len(train["layers"]) == len(infer["layers"]) + 1
    labels = client.images.get(infer["tag"]).attrs["Config"]["Labels"]
    assert labels["org.envlock.lock-digest"] == lock.digest
    assert labels["org.envlock.base-digest"] == result["base_digest"]
    assert labels["org.envlock.base"] == LOCAL_BASE
    dockerfile = (ROOT / "Dockerfile.infer").read_bytes()
    assert (
        labels["org.envlock.dockerfile-digest"]
        == f"sha256:{hashlib.sha256(dockerfile).hexdigest()}"
    )
    config = client.images.get(infer["tag"]).attrs["Config"]
    assert config["User"] == "10001:10001"


# What an image holds: the bytes of the files and links under /opt/venv (each inode once, as
# docker counts a layer's size), whether the builder's /opt/envlock is there, and pip.
_CONTENTS = """\
import importlib.util, json, os
seen, size = set(), 0
for top, dirs, files in os.walk("/opt/venv"):
    for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
        st = os.lstat(os.path.join(top, name))
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            size += st.st_size
print(json.dumps({"venv_bytes": size, "builder_files": os.path.exists("/opt/envlock"),
                  "pip": importlib.util.find_spec("pip") is not None}))
"""


def test_images_hold_the_venv_and_no_wheelhouse(client: Any, fresh_build: dict[str, Any]) -> None:
    """Each image above its base is the venv and nothing else: no wheelhouse (the wheels
    stay in the builder stages), no pip, and the training image's own layer holds only
    the training-only files, not a second copy of the shared venv."""
    base_size = client.images.get(LOCAL_BASE).attrs["Size"]
    seen = {}
    for role, image in fresh_build["images"].items():
        out = client.containers.run(
            image["tag"], ["python", "-c", _CONTENTS], network_mode="none", remove=True
        )
        seen[role] = json.loads(out)
        assert seen[role]["builder_files"] is False and seen[role]["pip"] is False, role
        above_base = client.images.get(image["tag"]).attrs["Size"] - base_size
        # Directories weigh nothing in docker's count; 1 MiB leaves room for other drivers.
        assert seen[role]["venv_bytes"] <= above_base <= seen[role]["venv_bytes"] + 2**20, role
    train_only = seen["train"]["venv_bytes"] - seen["infer"]["venv_bytes"]
    sizes = {r: client.images.get(i["tag"]).attrs["Size"] for r, i in fresh_build["images"].items()}
    assert train_only > 0 and sizes["train"] - sizes["infer"] <= train_only + 2**20


def _wheel(folder: Path, name: str, files: dict[str, str]) -> str:
    """A pure-Python wheel `name`-1.0 holding `files` in `folder`; its requirements line."""
    dist = f"{name}-1.0.dist-info"
    files = {
        **files,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return f"{name}==1.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"


def _train_stage(client: Any, tmp_path: Path, train_files: dict[str, str]) -> tuple[str, str]:
    """Build Dockerfile.train's `train` stage over a `main` wheel holding shared/core.py and
    a training-only wheel holding `train_files`: (the build's error or "", its added files)."""
    import docker

    for group, name, files in [
        ("main", "sharedpkg", {"shared/core.py": "X = 1\n"}),
        ("train", "trainpkg", train_files),
    ]:
        (tmp_path / group).mkdir()
        line = _wheel(tmp_path / group, name, files)
        (tmp_path / group / "requirements.txt").write_text(line)
    (tmp_path / "Dockerfile.train").write_bytes((ROOT / "Dockerfile.train").read_bytes())
    tag = f"envlock/test-train-stage:{os.getpid()}"
    try:
        client.images.build(
            path=str(tmp_path),
            dockerfile="Dockerfile.train",
            target="train",
            buildargs={"BASE": LOCAL_BASE},
            tag=tag,
            network_mode="none",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as e:
        return "\n".join(str(c.get("stream", "")) for c in e.build_log), ""
    try:
        added = client.containers.run(
            tag, ["sh", "-c", "cd /opt/envlock/added && find . ! -type d | sort"], remove=True
        )
    finally:
        client.images.remove(tag)
    return "", added.decode()


def test_the_training_layer_holds_only_what_the_training_install_added(
    client: Any, tmp_path: Path
) -> None:
    error, added = _train_stage(client, tmp_path, {"trainonly/__init__.py": "Y = 2\n"})
    assert error == ""
    site = "./lib/python3.11/site-packages"
    dist = f"{site}/trainpkg-1.0.dist-info"
    assert sorted(added.split()) == [
        f"{site}/trainonly/__init__.py",
        f"{site}/trainonly/__pycache__/__init__.cpython-311.pyc",
        f"{dist}/INSTALLER",
        f"{dist}/METADATA",
        f"{dist}/RECORD",
        f"{dist}/REQUESTED",
        f"{dist}/WHEEL",
    ]


def test_a_training_install_that_overwrites_a_shared_file_fails_the_build(
    client: Any, tmp_path: Path
) -> None:
    # The shared layer would be shadowed in the training image: the proof by layers would lie.
    error, _ = _train_stage(client, tmp_path, {"shared/core.py": "X = 2\n"})
    assert "the training-only install changed the shared venv:" in error
    assert "./lib/python3.11/site-packages/shared/core.py" in error


def test_installed_trees_agree_where_shared_and_differ_under_drift(
    client: Any, reference_build: dict[str, Any], drift_build: dict[str, Any]
) -> None:
    ref = reference_build["result"]["images"]
    names = sorted(read_lock(ROOT / "locks" / "pylock.toml").versions("main"))
    assert compare_trees(client, ref["train"]["tag"], ref["infer"]["tag"], names) == []
    drift = compare_trees(client, ref["infer"]["tag"], drift_build["images"]["infer"]["tag"], names)
    assert drift == [
        f"numpy: 2.4.6 ({ref['infer']['tag']}) vs 1.26.4 ({drift_build['images']['infer']['tag']})"
    ]


def test_rebuild_with_an_unchanged_lock_is_a_cache_hit(reference_build: dict[str, Any]) -> None:
    again = build("locks/pylock.toml", reference_build["pins"])
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert [i["cached"] for i in result["images"].values()] == [True, True]
    assert "unchanged lock, base and Dockerfile, cache hit" in again.stderr


def test_verify_image_against_its_lock_group(reference_build: dict[str, Any]) -> None:
    images = reference_build["result"]["images"]
    ok = run_cli("envlock", "verify", "--image", images["infer"]["tag"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "matches locks/pylock.toml [main]: 12 packages" in ok.stdout
    assert run_cli("envlock", "verify", "--image", images["train"]["tag"]).returncode == 0
    lacking = run_cli("envlock", "verify", "--image", images["infer"]["tag"], "--group", "train")
    assert lacking.returncode == 1
    assert "tqdm" in lacking.stdout and "missing" in lacking.stdout
    drift = run_cli(
        "envlock",
        "verify",
        "--image",
        images["infer"]["tag"],
        "--lock",
        "examples/numpy-drift/locks/pylock.toml",
        "--json",
    )
    assert drift.returncode == 1
    assert json.loads(drift.stdout) == [
        {
            "name": "numpy",
            "problem": "version",
            "locked": "1.26.4",
            "installed": "2.4.6",
            "benign": False,
        }
    ]


def test_parity_passes_on_the_image_pair(reference_build: dict[str, Any], tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    result = run_cli(
        "parity", "check", "--config", "examples/docker/parity.toml", "--json", str(report_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert {e["backend"] for e in report["environments"].values()} == {"docker"}
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])


def test_parity_fails_on_the_drift_pair_naming_numpy(
    reference_build: dict[str, Any], drift_build: dict[str, Any], tmp_path: Path
) -> None:
    report_path = tmp_path / "r.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        "examples/docker-numpy-drift/parity.toml",
        "--localize",
        "--json",
        str(report_path),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    numpy_diff = next(d for d in report["version_diffs"] if d["name"] == "numpy")
    assert numpy_diff["versions"] == {"train": "2.4.6", "infer": "1.26.4"}
    assert not next(o for o in report["outputs"] if o["name"] == "sr")["passed"]
    # The stages run in the images too (worker stages mode, hooks inside the container).
    where = report["localization"]
    assert where["first_stage"] == "preprocess" and where["first_module"] == "conv1", where


def test_search_serves_inside_the_drift_images(
    reference_build: dict[str, Any], drift_build: dict[str, Any], tmp_path: Path
) -> None:
    # Serve mode in containers: requests and responses cross the mounts, the workers stop.
    case = tmp_path / "case"
    result = run_cli(
        "parity",
        "search",
        "--config",
        "examples/docker-numpy-drift/parity.toml",
        "--output",
        "sr_float",
        "--examples",
        "20",
        "--out",
        str(case),
        "--json",
        str(tmp_path / "search.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads((tmp_path / "search.json").read_text())
    assert found["examples"] == 20 and found["verdict"] == "pass", found
    # The first example is the seeded set's worst sample, so the search is never below it.
    assert found["worst"]["max_abs_diff"] >= found["seeded"]["max_abs_diff"] > 0, found
    assert (case / "inputs" / "worst.npz").is_file()


@pytest.fixture(scope="module")
def tiny_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lock_tiny_spec(tmp_path_factory.mktemp("tiny-image"), "tiny-image-env")


def test_tampered_wheel_fails_the_build_naming_file_and_hashes(
    client: Any, tiny_lock: Path, tmp_path: Path
) -> None:
    lock = read_lock(tiny_lock)
    genuine = fetch(lock, tmp_path / "genuine").groups["main"][0]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tampered = mirror / genuine.name
    tampered.write_bytes(genuine.read_bytes() + b"\0")
    actual = subprocess.run(
        ["sha256sum", tampered], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    locked = next(w.sha256 for p in lock.packages for w in p.wheels if w.filename == genuine.name)
    env = {"ENVLOCK_MIRRORS": str(mirror), "ENVLOCK_CACHE_DIR": str(tmp_path / "cache")}
    result = build(str(tiny_lock), tmp_path / "pins.toml", "--offline", env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert (
        f"Error: {tampered}: sha256 mismatch: the lock pins sha256:{locked}, "
        f"the file has sha256:{actual}"
    ) in result.stderr


def test_a_base_that_moved_is_refused_until_repinned(
    client: Any, tiny_lock: Path, tmp_path: Path
) -> None:
    pins = tmp_path / "base-images.toml"
    first = build(str(tiny_lock), pins)
    assert first.returncode == 0, first.stderr
    real = json.loads(first.stdout)["base_digest"]
    assert real in pins.read_text()
    fake = "sha256:" + "1" * 64
    pins.write_text(pins.read_text().replace(real, fake))
    refused = build(str(tiny_lock), pins)
    assert refused.returncode == 1
    assert (
        f"Error: base image {LOCAL_BASE} now resolves to {real}, but {pins} pins {fake}"
        in refused.stderr
    )
    repinned = build(str(tiny_lock), pins, "--repin")
    assert repinned.returncode == 0, repinned.stderr
    assert real in pins.read_text() and fake not in pins.read_text()


DOCKER_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 3
count = 2

[inputs.arrays.x]
shape = [2]

[environments.train]
backend = "docker"
image = "{image}"

[environments.infer]
backend = "docker"
image = "{image}"

[run]
timeout = {timeout}
"""


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A TCP server on the host's loopback that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="module")
def root_image(client: Any, reference_build: dict[str, Any]) -> Iterator[str]:
    """The reference inference image with its user set back to root, as an image named
    directly (from a registry) may be: then only the sandbox makes the worker user 10001."""
    tag = f"envlock/test-root-user:{os.getpid()}"
    infer = reference_build["result"]["images"]["infer"]["tag"]
    client.images.build(
        fileobj=io.BytesIO(f"FROM {infer}\nUSER 0:0\n".encode()),
        tag=tag,
        network_mode="none",
        rm=True,  # no build container is left behind
        forcerm=True,
    )
    assert client.images.get(tag).attrs["Config"]["User"] == "0:0"
    yield tag
    client.images.remove(tag)


def test_the_worker_runs_sandboxed_and_cannot_reach_the_network(
    root_image: str, tmp_path: Path, listener: tuple[int, list[object]]
) -> None:
    """What the model code sees from inside, in an image whose own user is root: uid
    10001, no effective capabilities, NoNewPrivs set, /tmp writable and /opt/venv not (it
    is root's, so that alone does not prove a read-only root), and no connection to the
    host's loopback listener. The network half is weak evidence: the listener is
    reachable only under network_mode=host, and on a daemon started with --bridge=none
    (CI's) a container has no interface but lo whatever its network_mode. The
    configuration test below proves network_mode none, and each other sandbox setting,
    from what Docker reports."""
    port, accepted = listener
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter.py").write_text(
        textwrap.dedent(f"""\
        import os, socket
        import numpy as np

        def _connects(host):
            try:
                socket.create_connection((host, {port}), timeout=2).close()
                return 1
            except OSError:
                return 0

        def _writes(path):
            try:
                open(path, "w").close()
                return 1
            except OSError:
                return 0

        def predict(inputs):
            status = dict(line.split(":\\t", 1) for line in open("/proc/self/status")
                          if ":\\t" in line)
            facts = [
                _connects("127.0.0.1"),
                len([i for i in os.listdir("/sys/class/net") if i != "lo"]),
                os.getuid(),
                int(status["CapEff"].strip(), 16),
                int(status["NoNewPrivs"].strip()),
                _writes("/opt/venv/owned"),
                _writes("/tmp/scratch"),
            ]
            return {{"facts": np.array([facts] * len(inputs["x"]), dtype=np.int64)}}
        """)
    )
    image = root_image
    cfg = tmp_path / "parity.toml"
    cfg.write_text(DOCKER_CONFIG.format(image=image, timeout=120))
    work = tmp_path / "work"
    result = run_cli("parity", "check", "--config", str(cfg), "--workdir", str(work))
    assert result.returncode == 0, result.stdout + result.stderr
    with np.load(work / "train" / "outputs.npz", allow_pickle=False) as data:
        connects, interfaces, uid, caps, no_new_privs, writes_root, writes_tmp = data["facts"][0]
    assert (connects, interfaces) == (0, 0), "the container reached a network"
    assert accepted == []
    assert (uid, caps, no_new_privs) == (10001, 0, 1)
    assert (writes_root, writes_tmp) == (0, 1)


def _worker_containers(client: Any, outs: set[str]) -> dict[str, dict[str, Any]]:
    """The inspect record of each running parity worker container whose output folder
    (mounted at /parity/out) is one of `outs`, by that folder."""
    import docker

    seen = {}
    for container in client.containers.list(filters={"label": "org.envlock.role=parity-worker"}):
        try:
            container.reload()  # the full inspect record, read now
        except docker.errors.NotFound:  # it finished between listing and reading
            continue
        for m in container.attrs["Mounts"]:
            if m["Destination"] == "/parity/out" and m["Source"] in outs:
                seen[m["Source"]] = container.attrs
    return seen


def test_the_worker_container_is_configured_as_the_sandbox(
    client: Any, root_image: str, tmp_path: Path
) -> None:
    """What Docker itself reports about each live worker container (an image whose own
    user is root): no network, a read-only root, user 10001, no capabilities,
    no-new-privileges, the configured memory and process limits, a tmpfs /tmp, and exactly
    the check's mounts, all read-only but the output folder. Unlike probing from inside,
    this does not depend on how the daemon is set up (CI's runs with --bridge=none, where
    no container has a network whatever its network_mode)."""
    src = tmp_path / "src"
    src.mkdir()
    # Slow enough in predict for both containers to be seen while they run.
    (src / "adapter.py").write_text(
        "import time\n\ndef predict(inputs):\n    time.sleep(5)\n    return {'y': inputs['x']}\n"
    )
    image = root_image
    cfg = tmp_path / "parity.toml"
    # Limits other than the defaults, so that the user's values are what must arrive.
    cfg.write_text(
        DOCKER_CONFIG.format(image=image, timeout=120).replace(
            'backend = "docker"\n', 'backend = "docker"\nmemory = "3g"\npids = 300\n'
        )
    )
    work = tmp_path / "work"
    expected = {str((work / name).resolve()) for name in ("train", "infer")}
    check = subprocess.Popen(
        [str(BIN / "parity"), "check", "--config", str(cfg), "--workdir", str(work)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    outs: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 300
        while check.poll() is None and set(outs) != expected and time.monotonic() < deadline:
            outs.update(_worker_containers(client, expected - set(outs)))
            time.sleep(0.1)
        output, _ = check.communicate(timeout=300)
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()
    assert check.returncode == 0, output
    # Both environments' workers ran in a container of their own, each seen while it ran.
    assert set(outs) == expected, output
    for out, attrs in outs.items():
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none", out
        assert list(attrs["NetworkSettings"]["Networks"]) == ["none"], out
        assert host["ReadonlyRootfs"] is True, out
        assert attrs["Config"]["User"] == "10001:10001", out
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], out
        assert host["SecurityOpt"] == ["no-new-privileges"], out
        assert host["Privileged"] is False, out
        assert (host["Memory"], host["PidsLimit"]) == (3 * 1024**3, 300), out
        assert list(host.get("Tmpfs") or {}) == ["/tmp"], out
        # The daemon keeps at most 10 MB of what a worker prints (a flood fills no disk).
        assert host["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-size": "10m", "max-file": "1"},
        }, out
        mounts = {m["Destination"]: (m["Type"], m["Source"], m["RW"]) for m in attrs["Mounts"]}
        assert mounts == {
            "/parity/worker/worker.py": ("bind", str(Path(worker.__file__).resolve()), False),
            "/parity/probe/probe.py": ("bind", str(Path(probe.__file__).resolve()), False),
            "/parity/inputs": ("bind", str((work / "inputs").resolve()), False),
            "/parity/path0": ("bind", str(src.resolve()), False),
            "/parity/out": ("bind", out, True),
        }, out


def test_a_container_that_outlives_its_timeout_is_killed(
    client: Any, reference_build: dict[str, Any], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter.py").write_text("import time\n\ndef predict(inputs):\n    time.sleep(120)\n")
    image = reference_build["result"]["images"]["infer"]["tag"]
    cfg = tmp_path / "parity.toml"
    cfg.write_text(DOCKER_CONFIG.format(image=image, timeout=3))
    workers = {"label": "org.envlock.role=parity-worker"}
    before = {c.id for c in client.containers.list(all=True, filters=workers)}
    result = run_cli("parity", "check", "--config", str(cfg), timeout=100)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "worker timed out after 3s; container" in result.stdout and "was killed" in result.stdout
    left = {c.id for c in client.containers.list(all=True, filters=workers)} - before
    assert left == set()


def test_missing_image_is_an_environment_error(client: Any, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "adapter.py").write_text("def predict(inputs):\n    return inputs\n")
    cfg = tmp_path / "parity.toml"
    cfg.write_text(DOCKER_CONFIG.format(image="envlock/nope:never-built", timeout=10))
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 3
    assert "image envlock/nope:never-built not found" in result.stdout


# --- docker environments on Ray nodes (`[run] executor = "ray"`) ---------------------------


# The reference build's image pair, with a NumPy adapter (the reference model's torch import
# in four containers would cost most of a minute): the infer side scaled so that the figures
# compared are not all zero.
RAY_DOCKER_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 5
count = 16
batch_size = 4

[inputs.arrays.x]
shape = [8, 8]

[environments.train]
backend = "docker"
lock = "{lock}"
group = "train"

[environments.infer]
backend = "docker"
lock = "{lock}"
group = "main"

[environments.infer.env]
SCALE = "1.000001"

[run]
executor = "{executor}"
timeout = 120

[run.ray]
shards = 2
"""

RAY_DOCKER_ADAPTER = """\
import os

import numpy as np


def predict(inputs):
    x = inputs["x"].astype(np.float64)
    return {"y": np.tanh(x) * float(os.environ.get("SCALE", "1"))}
"""


def test_docker_images_sharded_on_two_nodes_equal_the_local_check(
    reference_build: dict[str, Any], ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    images = reference_build["result"]["images"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "adapter.py").write_text(RAY_DOCKER_ADAPTER)
    lock = ROOT / "locks" / "pylock.toml"
    checks = {}
    for executor in ("ray", "local"):  # side by side: the wall time is the sharded one's
        config = tmp_path / f"{executor}.toml"
        config.write_text(RAY_DOCKER_CONFIG.format(lock=lock, executor=executor))
        checks[executor] = subprocess.Popen(
            [str(BIN / "parity"), "check", "--config", str(config), "--json",
             str(config.with_suffix(".json"))],
            env={**os.environ, **ray_cluster.driver_env()},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    reports, stderr = {}, ""
    try:
        for executor, check in checks.items():
            out, err = check.communicate(timeout=600)
            assert check.returncode == 1, out + err  # the scaled side differs
            assert "Traceback" not in err, err
            reports[executor] = json.loads((tmp_path / f"{executor}.json").read_text())
            assert_valid_report(reports[executor])
            stderr += err if executor == "ray" else ""
    finally:
        for check in checks.values():
            if check.poll() is None:
                check.kill()
                check.wait()
    report, local = reports["ray"], reports["local"]
    same_figures(report, local)
    assert not report["outputs"][0]["passed"] and report["outputs"][0]["max_abs_diff"] > 0
    assert {s["node"] for s in report["execution"]["shards"]} == {"node1", "node2"}
    for env in ("train", "infer"):
        tag, image_id = images[env]["tag"], images[env]["image_id"]
        # the driver resolved the tag to its id; the nodes ran that id, and say so
        assert f"{env}: image {tag}: other machines run {image_id}" in stderr
        described = f"image {tag} ({image_id})"
        assert report["environments"][env]["description"] == described
        assert local["environments"][env]["description"] == described


def test_a_pinned_image_is_run_by_its_id_after_its_tag_moved(
    client: Any, reference_build: dict[str, Any]
) -> None:
    from envlock.backends.docker import DockerEnvironment
    from envlock.environments import EnvironmentSpec, open_environment, pin_environment

    images = reference_build["result"]["images"]
    infer, train = images["infer"]["image_id"], images["train"]["image_id"]
    repository, tag = "envlock/test-moving-tag", str(os.getpid())
    name = f"{repository}:{tag}"
    client.images.get(infer).tag(repository, tag)
    try:
        spec = EnvironmentSpec("infer", "docker", image=name)
        pinned = pin_environment(spec)  # on the driver
        fixed = pinned.pinned
        # built here, never pushed: an id, and no registry digest to pull it by
        assert fixed is not None and (fixed.name, fixed.id, fixed.digests) == (name, infer, ())
        client.images.get(train).tag(repository, tag)  # the tag moves
        unpinned, opened = open_environment(spec), open_environment(pinned)  # on a node
        assert isinstance(unpinned, DockerEnvironment) and isinstance(opened, DockerEnvironment)
        assert unpinned.image == train  # what the tag names now
        assert opened.image == infer and opened.description == f"image {name} ({infer})"
    finally:
        client.images.remove(name)


NOT_HERE = hashlib.sha256(b"an image no node has").hexdigest()


def test_an_image_no_node_has_fails_its_shard_naming_node_shard_and_image(
    client: Any, ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """An image named by its id alone: no node has it, and it has no digest to be pulled
    by (the driver lacks it too, but an id cannot move: it is sent as it is)."""
    only_id = f"sha256:{NOT_HERE}"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "adapter.py").write_text("def predict(inputs):\n    return inputs\n")
    text = DOCKER_CONFIG.format(image=only_id, timeout=60)
    config = tmp_path / "parity.toml"
    config.write_text(text.replace("[run]\n", '[run]\nexecutor = "ray"\n'))  # one shard
    done, report = parity_check(config, env=ray_cluster.driver_env())
    assert done.returncode == 3, done.stdout + done.stderr
    assert report["verdict"] == "error"
    (shard,) = report["execution"]["shards"]
    found = failures(report["errors"])  # the side failing second may be stopped instead
    assert 1 <= len(found) <= 2, report["errors"]
    for error in found:
        assert error.startswith(
            f"image {only_id} is not on this node and has no registry digest to pull it by: "
            "it must be pushed to a registry the nodes can reach"
        ), error
        assert f"(on node {shard['node']}, shard 1: samples 0-1;" in error, error


def test_a_node_lacking_an_image_pulls_it_by_digest(client: Any) -> None:
    """What a node does with an image named by digest that its daemon lacks: it pulls that
    digest (here from a registry address nothing answers at, so the pull fails, saying
    where it tried)."""
    from envlock.backends.docker import ImageUnavailable
    from envlock.environments import EnvironmentSpec, open_environment, pin_environment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        registry = f"127.0.0.1:{s.getsockname()[1]}"
    digest = f"{registry}/parity/none@sha256:{NOT_HERE}"
    pinned = pin_environment(EnvironmentSpec("infer", "docker", image=digest))  # the driver
    assert pinned.pinned is not None
    assert (pinned.pinned.id, pinned.pinned.digests) == (None, (digest,))
    pulls: list[str] = []
    with pytest.raises(ImageUnavailable) as raised:
        open_environment(pinned, progress=pulls.append)  # a node
    assert pulls == [f"pulling image {digest}"]
    message = str(raised.value)
    assert message.startswith(
        f"image {digest} is not on this node and could not be pulled by digest ({digest}: "
    ), message
    assert registry in message.partition(f"({digest}: ")[2], message  # the daemon's answer
    assert message.endswith(
        "it must be in a registry the nodes can reach, with `docker login` to it on each node"
    ), message


def test_a_tag_the_driver_lacks_fails_before_any_shard(client: Any, tmp_path: Path) -> None:
    from parity.config import load_config
    from parity.errors import WorkerError
    from parity.runs.replay import EnvRun
    from parity.runs.sharded import replay_sharded

    (tmp_path / "src").mkdir()
    config_path = tmp_path / "parity.toml"
    text = DOCKER_CONFIG.format(image="envlock/nope:never-built", timeout=10)
    ray = '[run]\nexecutor = "ray"\n'  # an address where no cluster is: never reached
    config_path.write_text(text.replace("[run]\n", ray) + '\n[run.ray]\naddress = "127.0.0.1:1"\n')
    config = load_config(config_path)
    runs = [EnvRun(spec) for spec in config.environments]
    with pytest.raises(WorkerError) as raised:
        replay_sharded(config, runs, tmp_path / "work", lambda line: None)
    assert raised.value.exit_code == 3
    assert str(raised.value) == (
        "environment 'train': image envlock/nope:never-built not found: the nodes run the "
        "image its tag names on this machine (build it here with `envlock build`); a tag "
        'can move: name it by digest instead (image = "registry/name@sha256:…")'
    )
