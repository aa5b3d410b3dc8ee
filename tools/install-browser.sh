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
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "warning: cannot install ${missing[*]} (not root): the Omniboard browser test will be skipped" >&2
  exit 0
fi
echo "installing ${missing[*]} (Debian packages, first run only) ..." >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
