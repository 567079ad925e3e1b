#!/usr/bin/env bash
# The browser tests drive Debian's chromium (never a browser downloaded by Playwright).
# Installs it with apt when it is missing (CI runs as root); prints its path on stdout.
set -euo pipefail
BIN=${CRYPTOPIPE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$BIN" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure_chromium: $BIN is missing; install Debian's chromium (apt-get install chromium) as root" >&2
    exit 1
  fi
  echo "ensure_chromium: installing Debian's chromium with apt (~1 min)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends chromium >&2
fi
echo "$BIN"
