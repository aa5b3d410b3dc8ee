"""Findings: rank the experiments on each headline number and say which gaps exceed the spread over seeds.

An experiment here is its evaluation averaged over seeds (`report.aggregate_seeds`): every number the mean
over seeds, "n_seeds" N and, when N > 1, "std": the same tree of sample standard deviations (n - 1 in the
denominator). A gap between two experiments next to each other in a ranking is *larger than the spread*
when it exceeds the larger of their two standard deviations; with one seed the spread is unknown.

FiF's experiments are ranked by final GM, A_KA, A_ZS (higher is better) and the mean forgetting of the
evaluation-only datasets (lower is better); TiC's by in-domain, backward and forward transfer per
time-stepped dataset (higher is better) and by total training compute (lower is better), with each regime's
compute as a multiple of the cheapest one and of the Oracle's (TiC, Sec. 3: the Oracle trains from scratch on
all data so far, t x C at step t; TiC's `params/basic-oracle/2022.yaml:74` `resume: None`, 26 `epochs: 32`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Entry:
    """One experiment's value in a ranking: the mean over seeds and its sample std (None: unknown)."""

    name: str
    value: float
    std: float | None = None


@dataclass(frozen=True)
class Ranked:
    """An entry at its place: rank 1 is the best (ties share a rank); `gap` to the entry ranked just above
    it, `spread` the larger std of the two, `beyond` whether gap > spread (None: spread unknown)."""

    entry: Entry
    rank: int
    gap: float | None = None
    spread: float | None = None
    beyond: bool | None = None


@dataclass(frozen=True)
class Column:
    """A ranked column of a findings table: its value and std per averaged evaluation (None: not there).

    `exact`: the quantity is the same for every seed (compute), so no gap is tested against a spread.
    """

    label: str
    higher_is_better: bool
    value: Callable[[dict], float | None]
    std: Callable[[dict], float | None] = lambda e: None
    fmt: str = ".1f"
    exact: bool = False


def spread(evaluation: Mapping[str, Any], *path: str | int) -> float | None:
    """The sample std over seeds of the number at `path` in an averaged evaluation (None with one seed)."""
    node: Any = evaluation.get("std")
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _same(a: float, b: float) -> bool:
    """Equal up to float noise (means of equal numbers summed in another order)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def rank(entries: Sequence[Entry], higher_is_better: bool) -> list[Ranked]:
    """Entries best first (ties by name), each with its rank and its gap to the one above, tested against the
    spread: the larger of the two stds. Equal values tie (same rank, gap 0); a gap equal to the spread is within it."""
    order = sorted(entries, key=lambda e: (-e.value if higher_is_better else e.value, e.name))
    out: list[Ranked] = []
    for i, entry in enumerate(order):
        if i == 0:
            out.append(Ranked(entry, 1))
            continue
        above = out[-1]
        tie = _same(above.entry.value, entry.value)
        gap = 0.0 if tie else abs(above.entry.value - entry.value)
        stds = (above.entry.std, entry.std)
        width = None if None in stds else max(stds)
        beyond = None if width is None else gap > width and not _same(gap, width)
        out.append(Ranked(entry, above.rank if tie else i + 1, gap, width, beyond))
    return out


def describe(label: str, ranked: Sequence[Ranked], higher_is_better: bool, fmt: str = ".1f",
             exact: bool = False) -> str:
    """One sentence for a ranking: who leads whom by how much, each gap against the seed spread; tied
    experiments are joined by '='.

    Args:
        exact: the quantity does not vary over seeds (compute): gaps are not tested against a spread.
    """
    if not ranked:
        return f"**{label}**: no experiment has it."
    groups: list[list[Ranked]] = []
    for r in ranked:
        if groups and r.rank == groups[-1][0].rank:
            groups[-1].append(r)
        else:
            groups.append([r])
    names = [" = ".join(r.entry.name for r in g) for g in groups]
    unknown = not exact and all(r.beyond is None for r in ranked[1:])  # said once, not after every gap
    parts = []
    for i, group in enumerate(groups[1:]):
        this = group[0]  # its gap is to the last of the group above
        note = "" if exact or unknown else f" ({'>' if this.beyond else 'within'} spread {this.spread:{fmt}})"
        parts.append(f"{names[i]} {'leads' if i == 0 else 'over'} {names[i + 1]} by {this.gap:{fmt}}{note}")
    head = f"**{label}** ({'higher' if higher_is_better else 'lower'} is better): "
    body = "; ".join(parts) if parts else names[0] + (" (tie)" if len(ranked) > 1 else "")
    return head + body + (" (one seed: spread unknown)" if unknown and parts else "") + "."


def total_gflops(budget: Mapping[str, Any] | None, tasks: int) -> float | None:
    """The training compute of an experiment over its stream, in GFLOPs (the budget's unit).

    sum(steps_by_task) x gflops_per_step (steps_per_task x `tasks` when `steps_by_task` is not recorded),
    plus the method's extra work (`budget.summary`'s "extra_work"): its gradient batches per task at the cost
    of a step, and its weight passes, whose cost per pass is what `gflops_per_sample` (the task's cost at
    steps_per_task, amortised per sample) holds beyond the steps and gradient batches. None without a budget
    in GFLOPs (`budget.measure: samples` profiles nothing).
    """
    if not budget or "gflops_per_step" not in budget:
        return None
    per_step, steps_per_task = budget["gflops_per_step"], budget["steps_per_task"]
    steps = budget.get("steps_by_task") or [steps_per_task] * tasks
    extra = budget.get("extra_work") or {}
    batches = extra.get("gradient_batches_per_task", 0)
    total = (sum(steps) + batches * len(steps)) * per_step

    def passes(s: int) -> int:
        return s * extra.get("weight_passes_per_step", 0) + extra.get("weight_passes_per_task", 0)

    if passes(steps_per_task) and "gflops_per_sample" in budget:
        task = budget["gflops_per_sample"] * budget["samples_per_task"]
        per_pass = max(0.0, task - (steps_per_task + batches) * per_step) / passes(steps_per_task)
        total += per_pass * sum(passes(s) for s in steps)
    return total


def _cell(value: float | None, std: float | None, place: Ranked | None, fmt: str = ".1f") -> str:
    if value is None:
        return "–"
    text = f"{value:{fmt}}" + (f" ± {std:{fmt}}" if std is not None else "")
    return text + (f" ({place.rank})" if place else "")


def _table(evaluations: Sequence[dict], columns: Sequence[Column], lead: Sequence[str] = (),
           extra: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """A markdown table, one row per experiment best first by the first column, each cell 'mean ± std (rank)',
    then one sentence per column. `lead`: headers of the cells in `extra` (experiment -> cells) shown after the
    method."""
    rankings, sentences = [], []
    for c in columns:
        entries = [Entry(e["experiment"], v, None if c.exact else c.std(e)) for e in evaluations
                   if (v := c.value(e)) is not None]
        ranked = rank(entries, c.higher_is_better)
        rankings.append({r.entry.name: r for r in ranked})
        sentences.append(f"- {describe(c.label, ranked, c.higher_is_better, c.fmt, c.exact)}")
    first = rankings[0] if rankings else {}
    order = sorted(evaluations, key=lambda e: first[e["experiment"]].rank if e["experiment"] in first else 1 << 30)
    header = ["experiment", "method", *lead, *(c.label for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in order:
        name = e["experiment"]
        cells = [_cell(c.value(e), None if c.exact else c.std(e), places.get(name), c.fmt)
                 for c, places in zip(columns, rankings)]
        lines.append("| " + " | ".join([name, e["method"], *(extra or {}).get(name, ()), *cells]) + " |")
    return lines + [""] + sentences


def _final(key: str) -> Column:
    return Column(f"final {key}", True, lambda e: e["rows"][-1].get(key),
                  lambda e: spread(e, "rows", len(e["rows"]) - 1, key))


def fif_findings(evaluations: Sequence[dict]) -> list[str]:
    """FiF's experiments ranked by final GM, A_KA, A_ZS and the evaluation-only datasets' forgetting."""
    columns = [_final(k) for k in ("GM", "A_KA", "A_ZS")]
    columns.append(Column("forgetting (eval.)", False, lambda e: e.get("forgetting", {}).get("mean_evaluation"),
                          lambda e: spread(e, "forgetting", "mean_evaluation")))
    return ["", "### FiF: ranked by final GM", ""] + _table(evaluations, columns)


def _tic_column(dataset: str, key: str) -> Column:
    return Column(f"{dataset} {key.replace('_', '-')}", True, lambda e: e.get("tic", {}).get(dataset, {}).get(key),
                  lambda e: spread(e, "tic", dataset, key))


def tic_findings(evaluations: Sequence[dict]) -> list[str]:
    """TiC's experiments ranked by in-domain / backward / forward per dataset, each with its total compute (ranked
    too, lower is better) as a multiple of the cheapest experiment's and of the Oracle's."""
    compute = {e["experiment"]: total_gflops(e.get("budget"), len(e["rows"]) - 1) for e in evaluations}
    ranked = rank([Entry(n, c) for n, c in compute.items() if c is not None], higher_is_better=False)
    places = {r.entry.name: r for r in ranked}
    cheapest = ranked[0].entry.value if ranked else None
    oracle = next((c for e in evaluations if e["method"] == "oracle" and (c := compute[e["experiment"]])), None)
    extra = {}
    for e in evaluations:
        name, c = e["experiment"], compute[e["experiment"]]
        extra[name] = [str((e.get("budget") or {}).get("init", "–")), _cell(c, None, places.get(name), ".4g"),
                       f"{c / cheapest:.2f}" if c and cheapest else "–",
                       f"{c / oracle:.2f}" if c and oracle else "–"]
    datasets = list(dict.fromkeys(d for e in evaluations for d in e["tic"]))
    columns = [_tic_column(d, k) for d in datasets for k in ("in_domain", "backward", "forward")]
    note = ("Total GFLOPs: the training steps of every task (the Oracle's grow as t x C at step t) x GFLOPs per step, "
            "plus the method's extra work; the same for every seed. × cheapest / × oracle: that total over the "
            "cheapest experiment's / over the Oracle's.")
    lead = ["init", "total GFLOPs", "× cheapest", "× oracle"]
    return (["", f"### TiC: ranked by {columns[0].label}", "", note, ""]
            + _table(evaluations, columns, lead, extra)
            + [f"- {describe('total GFLOPs', ranked, False, '.4g', exact=True)}"])


def findings_section(evaluations: Sequence[dict]) -> list[str]:
    """The report's "Findings": the FiF and the TiC rankings (markdown lines; none without experiments)."""
    fif = [e for e in evaluations if e["rows"] and all(k in e["rows"][-1] for k in ("A_KA", "A_ZS", "GM"))]
    tic = [e for e in evaluations if e.get("tic")]
    if not fif and not tic:
        return []
    seeds = sorted({e.get("n_seeds", 1) for e in evaluations})
    if seeds == [1]:
        how = ("One seed per experiment: the spread over seeds is unknown, so no gap is tested against it "
               "(`study.seeds` repeats every experiment).")
    else:
        how = (f"Mean over {' / '.join(map(str, seeds))} seeds ± sample std. A gap between neighbours in a ranking "
               "is > spread when it exceeds the larger of their two stds, else within it.")
    lines = ["", "## Findings", "", f"Rank per column in parentheses (1 = best). {how}"]
    if fif:
        lines += fif_findings(fif)
    if tic:
        lines += tic_findings(tic)
    return lines
