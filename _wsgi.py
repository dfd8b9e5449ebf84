"""WSGI entry point: `gunicorn --preload _wsgi:app` (scripts/serve.sh, the Dockerfile).

With `--preload` the weights are loaded once in the gunicorn master, before the workers fork,
not on each `/setup`. `python _wsgi.py` (what `label-studio-ml start` runs) starts gunicorn the
same way instead of Flask's debug server, which must never serve production traffic.
"""
from __future__ import annotations

import logging
import os
import sys

from backend.settings import Settings

SETTINGS = Settings.from_env()
logging.basicConfig(level=SETTINGS.log_level,
                    format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s", stream=sys.stderr)

from backend.app import create_app  # noqa: E402  (logging first: the import logs)

app = create_app(SETTINGS)


def main(argv: list[str]) -> None:
    port = argv[argv.index("--port") + 1] if "--port" in argv else os.environ.get("PORT", "9090")
    host = argv[argv.index("--host") + 1] if "--host" in argv else os.environ.get("HOST", "0.0.0.0")
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "--preload", "--bind", f"{host}:{port}",
                               "--workers", str(SETTINGS.workers), "--threads", str(SETTINGS.threads),
                               "--timeout", "120", "--log-level", SETTINGS.log_level.lower(), "_wsgi:app"])


if __name__ == "__main__":
    main(sys.argv[1:])
