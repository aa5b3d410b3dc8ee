#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the Omniboard browser test, and Node.js/npm for Omniboard itself,
# installed once when missing (idempotent: does nothing when they are there). Needs root or password-less sudo;
# without either it only warns, and the browser test is skipped.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
exec "$(dirname "$0")/apt-install.sh" "the Omniboard browser test will be skipped" ${missing[@]+"${missing[@]}"}
