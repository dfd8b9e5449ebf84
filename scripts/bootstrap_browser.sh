#!/usr/bin/env bash
# What the real-browser test (tests/backend/test_browser_workflow.py) and scripts/screenshots.py need:
# Debian's chromium (/usr/bin/chromium; playwright's own browser download is never used) and the
# playwright Python package in .venv (pip, with constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  else
    echo "chromium missing: run 'sudo apt-get update && sudo apt-get install -y chromium fonts-liberation'" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "no .venv yet: playwright is installed once scripts/bootstrap.sh has run (scripts/test.sh does both)" >&2
elif ! .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
  .venv/bin/pip install -q -c constraints.txt "playwright>=1.45"
fi
