#!/usr/bin/env bash
# The project's one test command: installs everything it needs, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh backend,test
scripts/bootstrap_ls.sh   # Label Studio server for the e2e tests, in its own venv
exec .venv/bin/python -m pytest -q "$@"
