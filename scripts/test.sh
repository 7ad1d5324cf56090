#!/usr/bin/env bash
# The default test suite (slow tests excluded), under a virtual X server so napari has an OpenGL canvas.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" python3 -m pytest "$@"
fi
exec python3 -m pytest "$@"
