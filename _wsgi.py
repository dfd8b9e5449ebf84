"""WSGI entry point: `gunicorn --preload _wsgi:app` (scripts/serve.sh, the Dockerfile).

With `--preload` the weights are loaded once in the gunicorn master, before the workers fork,
not on each `/setup`. `python _wsgi.py` (what `label-studio-ml start` runs) starts gunicorn the
same way instead of Flask's debug server, which must never serve production traffic; it execs
gunicorn before building the app, so the weights are loaded once, by gunicorn.
"""
from __future__ import annotations

import logging
import os
import sys

from backend.settings import Settings

SETTINGS = Settings.from_env()
logging.basicConfig(level=SETTINGS.log_level,
                    format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s", stream=sys.stderr)


def gunicorn_argv(host: str, port: str, settings: Settings) -> list[str]:
    """`gunicorn` arguments; no control socket: two servers of one user would share ~/.gunicorn/gunicorn.ctl."""
    return ["--preload", "--bind", f"{host}:{port}", "--workers", str(settings.workers),
            "--threads", str(settings.threads), "--timeout", "120", "--no-control-socket",
            "--log-level", settings.log_level.lower(), "_wsgi:app"]


def main(argv: list[str]) -> None:
    port = argv[argv.index("--port") + 1] if "--port" in argv else os.environ.get("PORT", "9090")
    host = argv[argv.index("--host") + 1] if "--host" in argv else os.environ.get("HOST", "0.0.0.0")
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", *gunicorn_argv(host, port, SETTINGS)])


if __name__ == "__main__":
    main(sys.argv[1:])
else:
    from backend.app import create_app  # after logging is set up: the import logs

    app = create_app(SETTINGS)
