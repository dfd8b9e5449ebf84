#!/usr/bin/env bash
# The project's one test command: installs everything it needs, then runs the whole suite
# (including the end-to-end tests with a real Label Studio, the real-browser test and the container test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh backend,test,cvat,ray   # ray: the `clickpose-ls prelabel --ray` test
scripts/bootstrap_ls.sh        # Label Studio server for the e2e tests, in its own venv
scripts/bootstrap_browser.sh   # Debian chromium + playwright for tests/backend/test_browser_workflow.py
scripts/bootstrap_docker.sh    # Debian docker.io, mmdebstrap, docker-compose for tests/backend/test_container.py
exec .venv/bin/python -m pytest -q "$@"
