#!/usr/bin/env bash
# Serve the Label Studio ML backend with gunicorn (weights loaded once, before workers fork; _wsgi.py
# holds the gunicorn command line).
# Usage: scripts/serve.sh [port]     settings come from the environment (README, "Settings")
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh backend,test >&2
port="${1:-${PORT:-9090}}"
exec .venv/bin/python _wsgi.py --host "${HOST:-0.0.0.0}" --port "$port"   # execs gunicorn
