#!/usr/bin/env bash
# A separate venv with the Label Studio server (used only by the end-to-end tests): Label Studio
# pins its own Django/numpy/redis stack, which must not leak into the backend's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VERSION="${LS_VERSION:-1.23.2}"
stamp=".venv-ls/.installed-label-studio-${LS_VERSION}"
if [ ! -f "$stamp" ]; then
  python3 -m venv .venv-ls
  .venv-ls/bin/pip install -q --upgrade pip >/dev/null
  .venv-ls/bin/pip install -q "label-studio==${LS_VERSION}"
  touch "$stamp"
fi
