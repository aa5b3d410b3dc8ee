#!/usr/bin/env bash
# Debian's slurm-wlm and munge for the Slurm tests (tests/test_slurm.py starts a two-node cluster on 127.0.0.1
# with them), installed once when missing (idempotent: does nothing when they are there). Needs root or
# password-less sudo; without either it only warns, and the Slurm tests fail saying what is missing.
set -euo pipefail

missing=()
for tool in slurmctld slurmd sbatch; do command -v "$tool" >/dev/null || { missing+=(slurm-wlm); break; }; done
command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
exec "$(dirname "$0")/apt-install.sh" "the Slurm tests cannot run" ${missing[@]+"${missing[@]}"}
