"""The image admins deploy, built and run here as CI does: a private dockerd (tests/backend/dockerd.py),
a Debian base image made without a registry, the project's Dockerfile built with the classic builder
and no network at all (`--build-arg WHEELS_DIR`, torch being the local 2.13.0 CPU wheel), then the
real Label Studio flow (tests/backend/ls_flow.py) against the backend in the container, with the demo
weights and with a weights file mounted from the host.

Networking: every container runs in the host's network namespace (`--network host`) with the backend
bound to 127.0.0.1, so Label Studio -> backend and backend -> Label Studio (image downloads) are
loopback connections, and the daemon needs no bridge, NAT or published port. Prints the image size,
the build time and the start time.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time

import pytest
import requests

from dockerd import Dockerd, make_base_image, missing_tools
from ls_flow import run_flow
from servers import REPO, free_port, save_tiny_checkpoint, start_label_studio, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.container]

BASE, IMAGE = "clickpose-test-base:bookworm", "clickpose-backend:test"
WHEELS = ".container-wheels"      # inside the build context; .gitignore'd, removed afterwards
NUMBERS: dict[str, str] = {}


@pytest.fixture(scope="module")
def dockerd():
    missing = missing_tools()
    if missing:
        pytest.skip(f"container test needs {', '.join(missing)}: run scripts/bootstrap_docker.sh as root")
    with Dockerd() as daemon:
        yield daemon
    assert not daemon.left_behind(), f"the test must leave the host as it found it: {daemon.left_behind()}"


@pytest.fixture(scope="module")
def base_image(dockerd) -> str:
    t0 = time.time()
    make_base_image(dockerd, BASE)
    NUMBERS["base image (mmdebstrap + docker import)"] = f"{time.time() - t0:.0f} s"
    return BASE


def _python_like(dockerd: Dockerd, image: str) -> str:
    """A host interpreter of the image's Python version, to pick the wheels (markers use the patch level)."""
    version = dockerd.docker("run", "--rm", "--network", "none", image, "python3", "-c",
                             "import platform; print(platform.python_version())").stdout.strip()
    for candidate in ("/usr/bin/python3", shutil.which("python3"), sys.executable):
        if candidate and subprocess.run([candidate, "-c", "import platform, sys; "
                                         f"sys.exit(platform.python_version() != {version!r})"]).returncode == 0:
            return candidate
    raise RuntimeError(f"no host python3 is {version} (the base image's); "
                       f"this one is {platform.python_version()}: the wheels would not match")


@pytest.fixture(scope="module")
def image(dockerd, base_image):
    """The image; the wheels folder stays until the module ends (later builds reuse the cached venv)."""
    try:
        subprocess.run(["scripts/docker_wheels.sh", WHEELS], cwd=REPO, check=True, timeout=900,
                       env={**os.environ, "PYTHON": _python_like(dockerd, base_image)})
        t0 = time.time()
        dockerd.docker("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base_image}",
                       "--build-arg", f"WHEELS_DIR={WHEELS}", "-t", IMAGE, str(REPO), timeout=1800)
        NUMBERS["image build (classic builder, no network)"] = f"{time.time() - t0:.0f} s"
        size = int(dockerd.docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
        NUMBERS["image size"] = f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)"
        yield IMAGE
    finally:
        shutil.rmtree(REPO / WHEELS, ignore_errors=True)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    ls = start_label_studio(tmp_path_factory.mktemp("container-ls"))
    yield ls
    stop(ls.proc)


class Container:
    """One backend container on the host network, bound to 127.0.0.1:port; removed on exit."""

    def __init__(self, dockerd: Dockerd, image: str, name: str, ls_url: str, *run_args: str):
        self.dockerd, self.name, self.port = dockerd, name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        t0 = time.time()
        dockerd.docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                       "-e", "HOST=127.0.0.1", "-e", f"PORT={self.port}", "-e", f"LABEL_STUDIO_URL={ls_url}",
                       "-e", "MODEL_SCORE_THRESHOLD=0", "-e", "GUNICORN_CMD_ARGS=--access-logfile -",
                       *run_args, image)
        self.up_s = self._wait(lambda: self._http_ok(), t0)
        self.healthy_s = self._wait(lambda: self.inspect("{{.State.Health.Status}}") == "healthy", t0)

    def _http_ok(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait(self, ready, t0: float, timeout: float = 300) -> float:
        while time.time() - t0 < timeout:
            if self.inspect("{{.State.Running}}") != "true":
                raise RuntimeError(f"container {self.name} stopped:\n{self.logs()[-3000:]}")
            if ready():
                return time.time() - t0
            time.sleep(0.5)
        raise TimeoutError(f"container {self.name} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def inspect(self, fmt: str) -> str:
        return self.dockerd.docker("inspect", "-f", fmt, self.name).stdout.strip()

    def logs(self) -> str:
        done = self.dockerd.docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def exec(self, *cmd: str) -> str:
        return self.dockerd.docker("exec", self.name, *cmd).stdout

    def close(self) -> None:
        self.dockerd.docker("rm", "-f", self.name, check=False)


def test_dockerignore_keeps_state_logs_venvs_and_tests_out_and_lets_any_wheels_folder_in(dockerd, base_image):
    probe = REPO / "wheels-probe-dir"
    probe.mkdir()
    try:
        (probe / "x-1.0-py3-none-any.whl").write_bytes(b"probe")
        listing = dockerd.docker("build", "--network", "none", "-q", "-f", "-", str(REPO),
                                 input_text=f"FROM {base_image}\nCOPY . /ctx\n")
        image_id = listing.stdout.strip().splitlines()[-1]
        files = set(dockerd.docker("run", "--rm", "--network", "none", image_id,
                                   "find", "/ctx", "-maxdepth", "2").stdout.split())
    finally:
        shutil.rmtree(probe)
    assert "/ctx/wheels-probe-dir/x-1.0-py3-none-any.whl" in files
    assert {"/ctx/Dockerfile", "/ctx/backend", "/ctx/clickpose_core", "/ctx/weights/clickpose_demo_synthetic.pth",
            "/ctx/docker/install_python.sh"} <= files
    kept_out = {f"/ctx/{p}" for p in (".git", ".venv", ".venv-ls", "tests", "runs", "data", "build",
                                      "weights/demo_training_state.pth", "weights/demo_training_log.jsonl")}
    assert not kept_out & files, kept_out & files


def test_image_runs_non_root_healthy_and_serves_label_studio_with_demo_weights(dockerd, image, label_studio,
                                                                               capsys):
    box = Container(dockerd, image, "clickpose-test-demo", label_studio.url)
    try:
        status = box.exec("cat", "/proc/1/status")
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid != "0" and box.exec("id", "-u").strip() != "0", status
        assert sorted(box.exec("ls", "/app/weights").split()) == ["MODEL_CARD.md", "README.md",
                                                                 "clickpose_demo_synthetic.pth"]
        health = requests.get(box.url + "/health", timeout=10).json()
        assert health["weights"]["kind"] == "demo"
        assert health["weights"]["path"].endswith("weights/clickpose_demo_synthetic.pth")
        run_flow(label_studio, box.url, backend_log=box.logs)
        assert box.logs().count("loading Click-Pose weights") == 1, "weights load once (gunicorn --preload)"
        NUMBERS["start (docker run -> /health 200; -> healthy)"] = f"{box.up_s:.1f} s; {box.healthy_s:.1f} s"
    finally:
        box.close()
    with capsys.disabled():
        print("\n[container] " + "; ".join(f"{k}: {v}" for k, v in NUMBERS.items()))


def test_image_uses_a_weights_file_mounted_from_the_host(dockerd, image, label_studio, tmp_path):
    weights = save_tiny_checkpoint(tmp_path / "mine.pth", "test only")
    os.chmod(weights, 0o644)
    box = Container(dockerd, image, "clickpose-test-mounted", label_studio.url,
                    "-v", f"{weights}:/weights/mine.pth:ro", "-e", "CLICKPOSE_WEIGHTS=/weights/mine.pth")
    try:
        health = requests.get(box.url + "/health", timeout=10).json()
        assert health["weights"]["path"] == "/weights/mine.pth" and health["weights"]["kind"] == "custom"
        assert run_flow(label_studio, box.url, persons=5, backend_log=box.logs)["model_version"] == \
            health["model_version"]
    finally:
        box.close()


def test_build_argument_bakes_a_weights_file_in(dockerd, image):
    baked = REPO / "weights" / "container-test-baked.pth"      # *.pth in weights/ is .gitignore'd
    save_tiny_checkpoint(baked, "test only")
    os.chmod(baked, 0o600)      # an admin's private file: the image must still let its user read it
    try:
        dockerd.docker("build", "--network", "none", "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg",
                       f"WHEELS_DIR={WHEELS}", "--build-arg", f"CLICKPOSE_WEIGHTS_FILE={baked.name}",
                       "-t", "clickpose-backend:baked", str(REPO), timeout=1800)
    finally:
        baked.unlink()
    script = ("import os; from clickpose_core.weights import describe_weights; "
              "print(os.environ['CLICKPOSE_WEIGHTS'], describe_weights(os.environ['CLICKPOSE_WEIGHTS']).kind)")
    out = dockerd.docker("run", "--rm", "--network", "none", "clickpose-backend:baked", "python", "-c", script)
    assert out.stdout.split() == [f"/app/weights/{baked.name}", "custom"]
