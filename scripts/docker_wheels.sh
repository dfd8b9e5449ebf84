#!/usr/bin/env bash
# Fill FOLDER with every wheel the image needs, for an air-gapped build:
#   scripts/docker_wheels.sh wheels && docker build --build-arg WHEELS_DIR=wheels -t clickpose-backend .
# FOLDER must lie inside this checkout (the build context). PYTHON (default python3) runs pip and
# must be the image's Python version, to the patch level (requirements carry markers such as
# python_full_version < "3.11.3"): python:3.11-slim has the newest 3.11, Debian 12 has 3.11.2.
# torch is the CPU build: from pip's own configuration (a local wheel folder) when it offers
# torch 2.13.0 there, else from TORCH_INDEX (default: PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: scripts/docker_wheels.sh FOLDER (inside this checkout)}"
pip=("${PYTHON:-python3}" -m pip --disable-pip-version-check -q)
mkdir -p "$dir"
torch=$(grep -E '^torch==' constraints.txt)
"${pip[@]}" download --no-deps --no-index -d "$dir" "$torch" 2>/dev/null \
  || "${pip[@]}" download --no-deps -d "$dir" --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "$torch"
# pip wheel builds the sdist-only requirements (attr, via label-studio-ml) into wheels too.
"${pip[@]}" wheel -w "$dir" --find-links "$dir" -c constraints.txt ".[backend]" "setuptools>=77" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
rm -f "$dir"/clickpose_backend-*.whl   # the image installs the project from its source
ls "$dir"/torch-*.whl >/dev/null
echo "$(ls "$dir"/*.whl | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1))" >&2
