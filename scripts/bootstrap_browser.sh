#!/usr/bin/env bash
# Debian's chromium for the real-browser test (playwright's own browser download is not used).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null
  else
    echo "chromium missing: run 'sudo apt-get install -y chromium'" >&2; exit 1
  fi
fi
