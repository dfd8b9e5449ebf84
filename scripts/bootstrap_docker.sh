#!/usr/bin/env bash
# What the container test (tests/test_container.py) needs: Debian's docker.io (dockerd; the test
# starts its own daemon, never the system one), mmdebstrap (the base image is made from Debian
# packages, no registry needed) and docker-compose (validates docker-compose.yml).
set -euo pipefail
missing=()
for tool in dockerd:docker.io mmdebstrap:mmdebstrap docker-compose:docker-compose; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing: ${missing[*]}: run 'sudo apt-get update && sudo apt-get install -y ${missing[*]}'" >&2
  exit 1
fi
# policy-rc.d exit 101: the package must not start a system dockerd (the test runs its own).
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; own_policy=1; fi
trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
