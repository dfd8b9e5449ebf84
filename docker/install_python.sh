#!/bin/sh
# Installs the Python side of the image into /opt/venv (run by the Dockerfile, twice).
#   install_python.sh torch     torch alone: from the wheels folder when it holds a torch wheel,
#                               else from TORCH_INDEX only, never PyPI's default (CUDA) build
#   install_python.sh project   the project and every other requirement: with no index when the
#                               wheels folder holds them all, else the missing ones from the index
# The wheels folder (/tmp/wheels, the WHEELS_DIR build argument) may be empty.
set -eu
wheels=/tmp/wheels
pip() { /opt/venv/bin/pip --disable-pip-version-check --no-cache-dir "$@"; }
case "$1" in
  torch)
    if ls "$wheels"/torch-*.whl >/dev/null 2>&1; then
      pip install --no-index --no-deps --find-links "$wheels" -c constraints.txt torch
    else
      pip install --no-deps --index-url "$TORCH_INDEX" -c constraints.txt torch
    fi ;;
  project)
    offline="--no-index --find-links $wheels"
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
      offline=""
    elif ! pip install --dry-run --quiet $offline -c constraints.txt ".[backend]" >/tmp/dry-run.log 2>&1; then
      grep -E "^ *ERROR" /tmp/dry-run.log >&2 || tail -5 /tmp/dry-run.log >&2
      echo "install_python.sh: WHEELS_DIR does not hold every requirement (above); the rest comes from the index" >&2
      offline="--find-links $wheels"
    fi
    pip install $offline -c constraints.txt ".[backend]"
    pip check ;;
  *) echo "usage: install_python.sh torch|project" >&2; exit 2 ;;
esac
