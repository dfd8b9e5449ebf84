#!/usr/bin/env bash
# Wheels the device machine lacks, for its Python (3.12, x86-64 Linux), into .whl/ (git-ignored):
# the device has no package index, so scripts/device_train.py installs these from the carried
# folder. Today that is pycocotools alone (the synthetic masks' RLE and the evaluation), at the
# version this checkout's .venv uses.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('pycocotools'))")
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pycocotools==$version"
ls -l .whl
