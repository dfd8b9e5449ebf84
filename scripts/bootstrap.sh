#!/usr/bin/env bash
# Create .venv (if needed) and install the project with torch pinned to the CPU build.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh backend,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-backend,test}"
python3 -m venv .venv 2>/dev/null || true
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -c constraints.txt torch==2.13.0
  .venv/bin/pip install -q -c constraints.txt -e ".[${extras}]"
  touch "$stamp"
fi
