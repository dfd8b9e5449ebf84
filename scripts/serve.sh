#!/usr/bin/env bash
# Serve the Label Studio ML backend with gunicorn (weights loaded once, before workers fork).
# Usage: scripts/serve.sh [port]     settings come from the environment (README, "Settings")
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh backend,test >&2
port="${1:-${PORT:-9090}}"
exec .venv/bin/gunicorn --preload --bind "${HOST:-0.0.0.0}:${port}" \
  --workers "${WORKERS:-1}" --threads "${THREADS:-4}" --timeout 120 \
  --log-level "$(echo "${LOG_LEVEL:-INFO}" | tr 'A-Z' 'a-z')" _wsgi:app
