#!/usr/bin/env bash
# `tools/apt-install.sh "WHAT STOPS WITHOUT THEM" PACKAGE ...`: install Debian packages with apt-get, as root or
# with password-less sudo; without either it only warns (saying what stops) and exits 0. Used by
# tools/install-browser.sh and tools/install-slurm.sh, which decide what is missing.
set -euo pipefail

consequence=$1
shift
[ $# -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "warning: cannot install $* (not root): $consequence" >&2
  exit 0
fi
echo "installing $* (Debian packages, first run only) ..." >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
