"""Progress reporting that suits a terminal, a log file and CI alike.

In a terminal a loop shows a live tqdm bar. Anywhere else (a log file, the output DVC or Sacred capture, a
CI job) a bar's carriage returns would leave hundreds of partial lines, so the loop prints one line when
it ends instead: what ran, how far, how long, and its last postfix (say, the loss). tqdm's own switch
`TQDM_DISABLE=1` silences both.

    bar = progress(loader, desc=f"task {t + 1}/{n}", total=steps, initial=start, unit="step")
    for batch in bar:
        ...
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
MODES = ("bar", "line", "off")


def progress_mode(stream: TextIO | None = None) -> str:
    """How loops report progress here: "bar" (a terminal), "line" (logs, CI) or "off" (`TQDM_DISABLE`).

    Args:
        stream: where progress goes; stderr by default.
    """
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return "off"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "line"
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "line"


class Progress:
    """An iterable wrapper that shows a bar or writes one summary line; see `progress`."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, initial: int, unit: str,
                 mode: str, stream: TextIO, mininterval: float):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: choose one of {MODES}")
        self.iterable, self.desc, self.unit, self.mode, self.stream = iterable, desc, unit, mode, stream
        self.total = total if total is not None else _length(iterable)
        self.initial = self.count = initial
        self.postfix: dict[str, Any] = {}
        self._bar = None
        if mode == "bar":
            # disable=False: the mode is decided (`progress_mode` reads TQDM_DISABLE when called); tqdm would
            # otherwise apply the TQDM_DISABLE its process had when it imported tqdm (its `envwrap` defaults).
            self._bar = tqdm(iterable, desc=desc, total=self.total, initial=initial, unit=unit, file=stream,
                             mininterval=mininterval, dynamic_ncols=True, disable=False)

    def __iter__(self) -> Iterator[T]:
        if self._bar is not None:
            yield from self._bar
            return
        start, finished = time.perf_counter(), False
        try:
            for item in self.iterable:
                yield item
                self.count += 1
            finished = True
        finally:
            if self.mode == "line":
                self.stream.write(self.summary(time.perf_counter() - start, finished) + "\n")
                self.stream.flush()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Values shown after the bar (tqdm's API) or at the end of the summary line."""
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **values)

    def summary(self, seconds: float, finished: bool = True) -> str:
        """The one line written when the loop ends, e.g. `task 2/4: 64/64 steps in 9.1 s (7.0 steps/s), loss=1.234`."""
        done = self.count - self.initial
        of = f"/{self.total}" if self.total is not None else ""
        line = f"{self.desc}: {self.count}{of} {self.unit}s in {seconds:.1f} s"
        if done and seconds > 0:
            line += f" ({done / seconds:.1f} {self.unit}s/s)"
        if self.initial:
            line += f", resumed at {self.initial}"
        if not finished:
            line += ", stopped early"
        if self.postfix:
            line += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return line

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, initial: int = 0, unit: str = "item",
             mode: str | None = None, stream: TextIO | None = None, mininterval: float = 1.0) -> Progress:
    """Wrap a loop: a live bar in a terminal, one summary line in logs and CI, nothing under `TQDM_DISABLE`.

    Args:
        iterable: what the loop iterates over.
        desc: what the loop does, e.g. "task 2/4" (starts the bar and the summary line).
        total: the number of items when the loop runs to its end (`len(iterable)` when it has one).
        initial: items already done before this call (a resumed loop).
        unit: what one item is ("step", "model", "dataset").
        mode: "bar", "line" or "off"; by default `progress_mode(stream)`.
        stream: where progress goes; stderr by default.
        mininterval: seconds between bar refreshes.

    Returns:
        An iterable with tqdm's `set_postfix(**values)` and `close()`.
    """
    stream = stream if stream is not None else sys.stderr
    return Progress(iterable, desc, total, initial, unit, mode or progress_mode(stream), stream, mininterval)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
