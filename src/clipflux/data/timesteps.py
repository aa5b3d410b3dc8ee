"""TiC time steps for imported data: from a timestamp in each sample's metadata, or from lists of sample ids.

Steps are named by what they span, and given in order:

- `2017`: one year; `2014-2016` or `2014..2016`: several years (TiC-DataComp's first step spans 2014-2016);
- `2017-03`: one month; `2014-01..2016-12`: a run of months.

A timestamp is a year (int or "2017"), an ISO date or date-time ("2017-03", "2017-03-15T10:00:00"), or Unix
seconds (a number above 100000). `TimeSteps.step_of` gives a sample's step index, or None when no step holds it
(the importer leaves such samples out and counts them).

TiC-style id lists (`from_id_lists`): one file per step, `<step>.npy`, `<step>.txt` or `<step>.json`, holding the
ids of the samples of that step (DataComp uids as TiC ships them: a .npy of two uint64 per uid, or strings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clipflux.errors import UserError

Period = tuple[int, int]  # (year, month); month 0 for a whole year


class TimeStepError(UserError, ValueError):
    """A step spec, timestamp or id list cannot be read."""


def parse_time(value) -> Period:
    """(year, month) of a timestamp; month is 0 when only the year is known."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 1000 <= value <= 9999:
            return int(value), 0
        if value > 100_000:
            moment = datetime.fromtimestamp(value, tz=timezone.utc)
            return moment.year, moment.month
    if isinstance(value, str):
        match = re.match(r"^(\d{4})(?:-(\d{2}))?", value.strip())
        if match:
            return int(match.group(1)), int(match.group(2) or 0)
    raise TimeStepError(f"cannot read a time from {value!r}: expected a year, an ISO date or Unix seconds")


def _bounds(spec: str) -> tuple[Period, Period]:
    """The first and last period (inclusive) a step spec covers; months are 1-12, or 0 for whole years."""
    year, month, years = r"(\d{4})", r"(\d{4})-(\d{2})", r"(\d{4})(?:-|\.\.)(\d{4})"
    if m := re.fullmatch(year, spec):
        return (int(m[1]), 1), (int(m[1]), 12)
    if m := re.fullmatch(years, spec):
        return (int(m[1]), 1), (int(m[2]), 12)
    if m := re.fullmatch(month, spec):
        return (int(m[1]), int(m[2])), (int(m[1]), int(m[2]))
    if m := re.fullmatch(rf"{month}\.\.{month}", spec):
        return (int(m[1]), int(m[2])), (int(m[3]), int(m[4]))
    raise TimeStepError(f"step {spec!r}: expected YYYY, YYYY-YYYY, YYYY-MM or YYYY-MM..YYYY-MM")


@dataclass(frozen=True)
class TimeSteps:
    """Ordered time steps and how a sample is assigned to one.

    Attributes:
        names: the step names, in time order (they become the classes of a TiC training pool).
        key: the metadata field read (a timestamp, or a sample id for id lists).
        ids: for id lists, sample id -> step index; empty when steps come from timestamps.
    """

    names: list[str]
    key: str
    ids: dict[str, int] = field(default_factory=dict)

    def step_of(self, meta: dict) -> int | None:
        """The step index of a sample from its metadata, or None when no step holds it."""
        value = meta.get(self.key)
        if value is None:
            raise TimeStepError(f"sample metadata has no {self.key!r} field (it has {sorted(meta)})")
        if self.ids:
            return self.ids.get(str(value))
        year, month = parse_time(value)
        for index, spec in enumerate(self.names):
            (y0, m0), (y1, m1) = _bounds(spec)
            if month == 0:  # a year-only timestamp belongs to a step that covers the whole year
                if y0 <= year <= y1 and m0 == 1 and m1 == 12:
                    return index
            elif (y0, m0) <= (year, month) <= (y1, m1):
                return index
        return None


def from_specs(specs: list[str], key: str = "timestamp") -> TimeSteps:
    """Steps from their specs (checked: readable, in time order, not overlapping)."""
    bounds = [_bounds(s) for s in specs]
    for (a, b), (c, _), spec in zip(bounds, bounds[1:], specs[1:]):
        if not (a <= b < c):
            raise TimeStepError(f"step {spec!r}: steps must be in time order and must not overlap")
    return TimeSteps(list(specs), key)


def yearly(first: str, last: int, key: str = "timestamp") -> TimeSteps:
    """TiC-DataComp's steps: a first step (e.g. "2014-2016"), then one step per year up to `last`."""
    (_, _), (end, _) = _bounds(first)
    return from_specs([first] + [str(y) for y in range(end + 1, last + 1)], key)


def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.dtype.names and len(array.dtype.names) == 2:  # DataComp: a uid as two uint64
            a, b = array.dtype.names
            return [f"{int(x):016x}{int(y):016x}" for x, y in zip(array[a], array[b])]
        return [str(x) for x in array.tolist()]
    if path.suffix == ".json":
        return [str(x) for x in json.loads(path.read_text())]
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    raise TimeStepError(f"{path}: expected a .npy, .json or .txt list of sample ids")


def from_id_lists(folder: str | Path, key: str = "uid", order: list[str] | None = None) -> TimeSteps:
    """Steps from one id list per step in `folder` (named `<step>.<npy|txt|json>`), sorted by name unless `order`.

    Raises:
        TimeStepError: a list is missing or unreadable, or an id is in two steps.
    """
    files = {p.stem: p for p in sorted(Path(folder).iterdir()) if p.suffix in (".npy", ".json", ".txt")}
    names = order or sorted(files)
    ids: dict[str, int] = {}
    for index, name in enumerate(names):
        if name not in files:
            raise TimeStepError(f"{folder}: no id list for step {name!r}; found {sorted(files)}")
        for uid in _read_ids(files[name]):
            if ids.setdefault(uid, index) != index:
                raise TimeStepError(f"{folder}: id {uid!r} is in steps {names[ids[uid]]!r} and {name!r}")
    return TimeSteps(names, key, ids)
