"""The errors a user fixes (a parameter, a file, a folder, a download), and how commands and stages report them.

Each such error of clipflux derives from `UserError` and says in its message what is wrong and what is
allowed. `reported` runs a command or stage so that it ends with that message on one line, and exit status 2,
instead of a traceback (and a stage stopped on request, `stopping.Stopped`, with the status that asks for a rerun). This module imports nothing of clipflux: every layer may raise its errors.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem the user fixes by changing a parameter, a file or a folder; reported in one line."""


def reported(main: Callable[[], T], prog: str | None = None) -> T:
    """Run `main`; a `UserError` ends the process with `<prog>: error: <message>` on stderr and exit status 2."""
    try:
        return main()
    except UserError as err:
        print(f"{prog or sys.argv[0]}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as err:  # a stop on request (`stopping.Stopped`) ends with the status it names
        status = getattr(err, "exit_status", None)
        if status is None:
            raise
        print(f"{prog or sys.argv[0]}: {err}", file=sys.stderr)
        raise SystemExit(status) from None
