#!/usr/bin/env bash
# Deploy Click-Pose as a nuclio function next to a self-hosted CVAT (the serverless setup of CVAT's
# docs: docker compose -f docker-compose.yml -f components/serverless/docker-compose.serverless.yml up -d).
#
#   cvat/nuclio/deploy.sh            CPU variant (function.yaml)
#   cvat/nuclio/deploy.sh --gpu      GPU variant (function-gpu.yaml, needs the NVIDIA container toolkit)
#   cvat/nuclio/deploy.sh --stage-only DIR [--gpu]   only assemble the function folder in DIR
#
# nuclio builds from one folder, so the function folder is assembled first: main.py, the yaml,
# clickpose_core/, clickpose_cvat/ and the default weights (official interactive R50 if it is in
# weights/, else the demo weights; the official file is under the IDEA License 1.0, non-commercial
# research only). Then the same nuctl calls as CVAT's serverless/deploy_cpu.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
yaml=function.yaml stage="" stage_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) yaml=function-gpu.yaml ;;
    --stage-only) stage_only=1; stage="${2:?--stage-only needs a folder}"; shift ;;
    *) echo "deploy.sh: unknown argument $1 (use --gpu, --stage-only DIR)" >&2; exit 2 ;;
  esac
  shift
done

weights=""
for name in ClickPose_interactive_R50.pth clickpose_demo_synthetic.pth; do
  if [ -f "$repo/weights/$name" ]; then weights="$repo/weights/$name"; break; fi
done
[ -n "$weights" ] || { echo "deploy.sh: no weights in $repo/weights (see weights/README.md)" >&2; exit 1; }

if [ -z "$stage" ]; then stage="$(mktemp -d)"; trap 'rm -rf "$stage"' EXIT; fi
mkdir -p "$stage/weights"
cp "$here/main.py" "$here/$yaml" "$stage/"
cp -r "$repo/clickpose_core" "$repo/clickpose_cvat" "$stage/"
cp "$weights" "$stage/weights/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
echo "function folder: $stage ($yaml, weights $(basename "$weights"))"
[ "$stage_only" = 1 ] && exit 0

command -v nuctl >/dev/null || { echo "deploy.sh: nuctl not found; install the nuclio CLI version your CVAT uses" >&2; exit 1; }
nuctl create project cvat --platform local || true   # already exists on a second deploy
nuctl deploy --project-name cvat --path "$stage" --file "$stage/$yaml" --platform local \
  --platform-config '{"attributes": {"network": "cvat_cvat"}}'
nuctl get function --platform local
