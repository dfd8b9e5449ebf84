"""Start a real Label Studio (from .venv-ls) and the backend under gunicorn, on 127.0.0.1 only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

REPO = Path(__file__).resolve().parents[2]
LS_BIN = REPO / ".venv-ls" / "bin" / "label-studio"
LS_TOKEN = "e2e0123456789abcdef0123456789abcdef0123"
LS_USER, LS_PASSWORD = "e2e@example.com", "e2e-password-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


def start_label_studio(workdir: Path) -> Server:
    if not LS_BIN.exists():
        raise RuntimeError(f"{LS_BIN} is missing: run scripts/bootstrap_ls.sh (scripts/test.sh does)")
    port = free_port()
    data = workdir / "ls-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "DJANGO"))}
    env.update({
        "HOME": str(workdir), "XDG_CACHE_HOME": str(workdir / "cache"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data),
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
    })
    cmd = [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--username", LS_USER, "--password", LS_PASSWORD, "--user-token", LS_TOKEN, "--enable-legacy-api-token"]
    return _launch(cmd, env, workdir, workdir / "label-studio.log", port, "/health/", 240)


def start_backend(workdir: Path, weights: str, label_studio_url: str, **env_extra: str) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update({"CLICKPOSE_WEIGHTS": weights, "MODEL_SCORE_THRESHOLD": "0", "LABEL_STUDIO_URL": label_studio_url,
                "WORKERS": "1", "THREADS": "4", "LOG_LEVEL": "INFO", "XDG_CACHE_HOME": str(workdir / "cache"),
                **env_extra})
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--threads", "4", "--timeout", "120", "--no-control-socket", "_wsgi:app"]
    return _launch(cmd, env, REPO, workdir / f"backend-{port}.log", port, "/health", 120)


def _launch(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, port: int, health: str,
            timeout: float) -> Server:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + health, proc, timeout, log)
    except Exception:
        stop(proc)
        raise
    return Server(url, proc, log)


@contextmanager
def label_studio_and_backend(workdir: Path, weights: str, **env_extra: str) -> Iterator[tuple[Server, Server]]:
    """A real Label Studio and the backend (pointed at it), stopped on exit."""
    ls = start_label_studio(workdir)
    try:
        backend = start_backend(workdir, weights, ls.url, **env_extra)
        try:
            yield ls, backend
        finally:
            stop(backend.proc)
    finally:
        stop(ls.proc)


def save_tiny_checkpoint(path: Path, licence: str) -> str:
    """`tests.models.tiny_random_model`, saved like real weights."""
    from clickpose_core.checkpoint import save_checkpoint
    from tests.models import tiny_random_model

    save_checkpoint(path, tiny_random_model(), meta={"licence": licence})
    return str(path)
