"""`python _wsgi.py` (what `label-studio-ml start` runs): gunicorn with the weights loaded once,
and no gunicorn control socket that two servers of one user would share (~/.gunicorn/gunicorn.ctl)."""
from __future__ import annotations

import sys

import pytest

from servers import REPO, _launch, free_port, stop

pytestmark = pytest.mark.slow


def test_python_wsgi_loads_weights_once_and_leaves_no_control_socket(tmp_path, tiny_checkpoint):
    port = free_port()
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "CLICKPOSE_WEIGHTS": tiny_checkpoint,
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "WORKERS": "2", "LOG_LEVEL": "INFO"}
    server = _launch([sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)], env, REPO,
                     tmp_path / "wsgi.log", port, "/health", 120)
    try:
        log = server.log.read_text()
    finally:
        stop(server.proc)
    assert log.count("loading Click-Pose weights") == 1, log
    assert "Booting worker" in log, "gunicorn serves, not Flask's debug server"
    assert not list(tmp_path.rglob("*.ctl")), "no gunicorn control socket"
