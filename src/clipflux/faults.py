"""Fault injection for the resume tests: die with SIGKILL at a named point of a real run.

Set `CLIPFLUX_FAULT=<point>@<n>` and the process kills itself (SIGKILL: no cleanup, no flush) the n-th
time it reaches `<point>`. Points: `step` (after an optimizer step), `checkpoint-write` (halfway through
writing a checkpoint's temporary file), `task-end` (after a task's weights are saved, before its boundary
checkpoint), `evaluate` (after each evaluated model), `finish` (after each step of handing a finished run's weights
over to the outputs: each file written, the checkpoints pruned, the kept weights retired). Unset, `reached` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CLIPFLUX_FAULT"
_counts: dict[str, int] = {}


def reached(point: str) -> None:
    """Mark that `point` was reached; SIGKILL this process if the fault plan says so."""
    plan = os.environ.get(ENV)
    if not plan:
        return
    name, _, n = plan.partition("@")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
