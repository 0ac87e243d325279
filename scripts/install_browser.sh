#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/service/test_browser.py drives it with Playwright).
# Idempotent: does nothing when /usr/bin/chromium already runs. Never `playwright install` (no downloads
# outside the Debian/PyPI registries): the test launches this binary through executable_path.
set -euo pipefail

if [ -x /usr/bin/chromium ] && /usr/bin/chromium --version >/dev/null 2>&1; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
