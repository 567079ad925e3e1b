#!/usr/bin/env bash
# Creates (once) the Python environment the stack and the tests run in, outside the repository:
#   ${CRYPTOPIPE_CACHE:-~/.cache/cryptopipe}/venv-<hash of the requirement files>
# and points it at this checkout. Prints the venv's python on stdout; progress goes to stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CRYPTOPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cryptopipe}
PYTHON=${PYTHON:-python3}
HASH=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$HASH"

say() { printf '%s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  say "bootstrap: Python 3.11+ is needed (found: $("$PYTHON" --version 2>&1 || echo none))"; exit 1
fi
if [ ! -f "$VENV/.complete" ]; then
  start=$(date +%s)
  say "bootstrap: creating $VENV (first run installs Airflow and friends: ~2-3 minutes)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/pip" install --disable-pip-version-check -q \
        -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" >&2; then
    say "bootstrap: pip install failed (see above)"; exit 1
  fi
  touch "$VENV/.complete"
  say "bootstrap: venv ready in $(( $(date +%s) - start ))s"
fi
# Point the venv at this checkout (instead of an editable install, which would pin one path):
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ROOT" > "$SITE/cryptopipe-checkout.pth"
cat > "$VENV/bin/cryptopipe" <<PYEOF
#!$VENV/bin/python
import sys
from cryptopipe.cli import main
sys.exit(main())
PYEOF
chmod +x "$VENV/bin/cryptopipe"
ln -sfn "$VENV" "$CACHE/venv-current"   # the stack's programs run from this stable link
echo "$VENV/bin/python"
