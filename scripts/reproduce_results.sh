#!/usr/bin/env bash
# Reproduce the README's results table: regenerate the held-out synthetic set (seed 777, never
# used in training) and evaluate the demo weights in the product (pinned), official (unpinned,
# as released) and manual-correction modes, then a second unseen seed.
# Usage: scripts/reproduce_results.sh [weights]   (default: weights/clickpose_demo_synthetic.pth)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh backend,test >&2
weights="${1:-weights/clickpose_demo_synthetic.pth}"
data=data/synth_eval_s777
if [ ! -f "$data/annotations.json" ]; then
  .venv/bin/clickpose synth --out "$data" --num-images 300 --seed 777 --size 384x512
fi
.venv/bin/clickpose eval --data "$data" --weights "$weights" --out runs/results \
  --clicks 0,1,2,3,5 --box-clicks 0,3,5 --thresholds 85,90,95 --modes pinned,official,manual
# The same weights on a second unseen seed (778, 100 images): the result must not be a property of
# one set of images.
other=data/synth_eval_s778
if [ ! -f "$other/annotations.json" ]; then
  .venv/bin/clickpose synth --out "$other" --num-images 100 --seed 778 --size 384x512
fi
.venv/bin/clickpose eval --data "$other" --weights "$weights" --out runs/results_s778 \
  --clicks 0,1,3,5 --box-clicks 0,3,5 --thresholds 90 --modes pinned,manual
