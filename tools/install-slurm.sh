#!/usr/bin/env bash
# Debian's slurm-wlm and munge for the Slurm tests (tests/test_slurm.py starts a two-node cluster on 127.0.0.1
# with them), installed once when missing (idempotent: does nothing when they are there). Needs root or
# password-less sudo; without either it only warns, and the Slurm tests fail saying what is missing.
set -euo pipefail

missing=()
for tool in slurmctld slurmd sbatch; do command -v "$tool" >/dev/null || { missing+=(slurm-wlm); break; }; done
command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "warning: cannot install ${missing[*]} (not root): the Slurm tests cannot run" >&2
  exit 0
fi
echo "installing ${missing[*]} (Debian packages, first run only) ..." >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
