#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real: redis-server (the Redis store
# backend is tested against a real server) and chromium (the HTML report is opened headless).
# Skips what is already present; needs root (CI runs as root) or passwordless sudo.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "sysdeps: missing ${need[*]} and not root; tests that need them will say so and skip" >&2; exit 0; fi
fi
echo "sysdeps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
