#!/usr/bin/env bash
# clipflux's one entry point. It creates .venv from pyproject.toml + constraints.txt when missing or stale
# (idempotent: a second call reuses it), then runs what you ask:
#   ./run.sh repro [dvc repro args]   the main job: the whole DVC pipeline on the embedded default
#   ./run.sh test  [pytest args]      the fast test tier (unit, property, in-process resume; not e2e or slow)
#   ./run.sh test-all [pytest args]   every test (CI): also real SIGKILLs, torchrun, the pipelines, the browser,
#                                     a two-node Slurm cluster
#   ./run.sh setup                    only set up the environment
#   ./run.sh dvc [args]               DVC, writing dvc.lock atomically (src/clipflux/dvcrun.py)
#   ./run.sh <command ...>            any command inside the environment (e.g. ./run.sh clipflux budget)
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3.11}
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.clipflux-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setting up .venv (first run takes a few minutes) ..." >&2
  rm -rf .venv
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
  echo "$stamp" > .venv/.clipflux-stamp
fi
export PATH="$PWD/.venv/bin:$PATH"

command=${1:-}
# The test suite drives Omniboard in headless Chromium (Debian's chromium and chromium-driver) and starts a
# two-node Slurm cluster on 127.0.0.1 (Debian's slurm-wlm and munge): installed once.
if [ "$command" = test-all ] || [ "$command" = setup ]; then
  tools/install-browser.sh
  tools/install-slurm.sh
fi

[ $# -gt 0 ] && shift
case "$command" in
  repro) exec python -m clipflux.dvcrun repro "$@" ;;  # dvc, with dvc.lock written atomically
  dvc) exec python -m clipflux.dvcrun "$@" ;;
  # Both tiers run their test files on two worker processes (pytest-xdist; a file's tests stay together, so its
  # shared fixtures are built once). Much of a test's time is one core importing torch in a new process; OpenMP
  # threads that wait yield their core (OMP_WAIT_POLICY) instead of spinning against the other worker's.
  test) OMP_WAIT_POLICY=PASSIVE exec python -m pytest -n 2 --dist loadfile -m "not e2e and not slow" "$@" ;;
  test-all) OMP_WAIT_POLICY=PASSIVE exec python -m pytest -n 2 --dist loadfile "$@" ;;
  setup) echo "environment ready: $PWD/.venv" ;;
  "") echo "usage: ./run.sh repro|test|test-all|setup|<command>" >&2; exit 2 ;;
  *) exec "$command" "$@" ;;
esac
