"""Reports across experiments: the A_KA-versus-A_ZS trajectory plot (FiF's main figure), a bar chart of the
final GM, a heatmap of each experiment's evaluation matrix, the data behind DVC plots, and a markdown summary.

Every function takes the experiments' evaluations as `stages/evaluate.py` writes them (`eval.json`), each
averaged over its seeds by `aggregate_seeds`: every number is then the mean over seeds, and with N > 1 seeds
"std" holds the sample standard deviation (n - 1 in the denominator) of each number at the same place, shown
as "mean ± std" in tables and as error bars (one std each way) in plots. With one seed nothing changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipflux.findings import findings_section, spread  # noqa: E402
from clipflux.metrics import seed_mean, seed_std  # noqa: E402

SUMMARY = ("A_KA", "A_ZS", "GM")
GROUP_TITLES = {"adaptation": "adaptation\n→ A_KA", "evaluation": "eval-only\n→ A_ZS", "summary": "summary"}


def load_evaluations(path: str | Path) -> list[dict]:
    """The evaluation of every seed of one experiment from its `eval.json`: the list under "seeds" (seed 0's
    evaluation is also the file's top level), or the whole file as the only seed when it has no "seeds"."""
    evaluation = json.loads(Path(path).read_text())
    seeds = evaluation.get("seeds")
    if seeds is None:
        return [evaluation]
    if not seeds or any(s.get("experiment") != evaluation.get("experiment") for s in seeds):
        raise ValueError(f"{path}: 'seeds' must list one evaluation of {evaluation.get('experiment')!r} per seed")
    return [{k: v for k, v in s.items() if k != "seeds"} for s in seeds]


def aggregate_seeds(seeds: list[dict]) -> dict[str, Any]:
    """One experiment's evaluation over its seeds: every number the mean over seeds (`metrics.seed_mean`),
    "n_seeds", and with more than one seed "std", the sample std of every number (`metrics.seed_std`).
    A single seed's evaluation comes back as it is."""
    n = len(seeds)
    if n == 1:
        return seeds[0] | {"n_seeds": 1}
    strip = [{k: v for k, v in s.items() if k not in ("seed", "seeds")} for s in seeds]
    try:
        return seed_mean(strip) | {"n_seeds": n, "std": seed_std(strip)}
    except ValueError as error:  # e.g. a seed that evaluated fewer tasks
        raise ValueError(f"{seeds[0].get('experiment')}: {error}") from error


def _std_columns(e: dict, row: int, keys: tuple[str, ...] = ("A_KA", "A_ZS", "GM")) -> dict[str, float]:
    """`<key>_std` of a row's summary numbers; nothing with one seed (the DVC plot data keep today's columns)."""
    out = {f"{k}_std": spread(e, "rows", row, k) for k in keys}
    return {k: round(v, 4) for k, v in out.items() if v is not None}


def _colours(evaluations: list[dict]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {e["experiment"]: cycle[i % len(cycle)] for i, e in enumerate(evaluations)}


def _complete(evaluation: dict) -> bool:
    return all(k in r for r in evaluation["rows"] for k in SUMMARY)


def trajectory_rows(evaluations: list[dict]) -> list[dict]:
    """One flat row per (experiment, task) with A_KA / A_ZS / GM (and their `_std` over seeds when there are
    several): the data behind the trajectory and GM-per-task DVC plots (experiments on the time-ordered world
    have no A_KA or A_ZS and are not in it)."""
    return [
        {"experiment": e["experiment"], "method": e["method"], "task": r["after_task"], "subset": r.get("subset", False),
         **{k: round(r[k], 4) for k in SUMMARY}, **_std_columns(e, i)}
        for e in evaluations if _complete(e)
        for i, r in enumerate(e["rows"])
    ]


def final_rows(evaluations: list[dict]) -> list[dict]:
    """One row per experiment with A_KA / A_ZS / GM: base and final values, and the final values' `_std` over
    seeds when there are several (the data behind the GM bar chart)."""
    out = []
    for e in filter(_complete, evaluations):
        base, final = e["rows"][0], e["rows"][-1]
        row = {"experiment": e["experiment"], "method": e["method"], "tasks": len(e["rows"]) - 1}
        row |= {k: round(final[k], 4) for k in SUMMARY} | {f"{k}_base": round(base[k], 4) for k in SUMMARY}
        out.append(row | _std_columns(e, len(e["rows"]) - 1))
    return out


def tic_rows(evaluations: list[dict]) -> list[dict]:
    """One row per (experiment, time-stepped dataset): TiC's in-domain / backward / forward, GEM's BWT / FWT
    (and their `_std` over seeds when there are several)."""
    rows = []
    for e in evaluations:
        for name, tic in e.get("tic", {}).items():
            stds = {f"{k}_std": spread(e, "tic", name, k) for k in tic}
            rows.append({"experiment": e["experiment"], "method": e["method"], "dataset": name,
                         "metric": e["datasets"][name]["metric"], **{k: round(v, 4) for k, v in tic.items()},
                         **{k: round(v, 4) for k, v in stds.items() if v is not None}})
    return rows


def _iso_gm(ax) -> None:
    """Light curves of constant GM = sqrt(A_KA * A_ZS) at round values, to read the trade-off off the plot."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    low, high = math.sqrt(max(x0, 0.5) * max(y0, 0.5)), math.sqrt(x1 * y1)
    step = next(s for s in (1, 2, 5, 10, 20) if (high - low) / s <= 6)
    zs = np.linspace(max(x0, 0.5), x1, 200)
    for g in np.arange(math.ceil(low / step) * step, high, step):
        ka = g * g / zs
        inside = (ka >= y0) & (ka <= y1)
        if inside.sum() < 2:
            continue
        ax.plot(zs[inside], ka[inside], color="0.6", lw=0.8, ls=":", zorder=0)
        ax.annotate(f"GM {g:g}", (zs[inside][-1], ka[inside][-1]), fontsize=7, color="0.45", ha="right", va="bottom")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def plot_trajectories(evaluations: list[dict], path: str | Path) -> None:
    """Each experiment's path through (A_ZS, A_KA): hollow circle = base model, star = after the last task.

    Small markers are evaluations on subsets (during the stream), large ones on the full sets. Over several
    seeds the path is the mean and error bars on both axes span one sample std each way.
    """
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=120)
    colours = _colours(evaluations)
    shown = [e for e in evaluations if _complete(e)]
    lows, highs = [], []  # the extent of every point with its error bars, for the axis limits
    for e in shown:
        zs = [r["A_ZS"] for r in e["rows"]]
        ka = [r["A_KA"] for r in e["rows"]]
        c = colours[e["experiment"]]
        n = e.get("n_seeds", 1)
        ax.plot(zs, ka, color=c, lw=1.5, label=f"{e['experiment']} ({e['method']})" + (f", {n} seeds" if n > 1 else ""))
        x_err = [spread(e, "rows", i, "A_ZS") or 0.0 for i in range(len(zs))]
        y_err = [spread(e, "rows", i, "A_KA") or 0.0 for i in range(len(ka))]
        if "std" in e:
            ax.errorbar(zs, ka, xerr=x_err, yerr=y_err, fmt="none", ecolor=c, elinewidth=1, capsize=2, alpha=0.6)
        lows += [(x - dx, y - dy) for x, y, dx, dy in zip(zs, ka, x_err, y_err)]
        highs += [(x + dx, y + dy) for x, y, dx, dy in zip(zs, ka, x_err, y_err)]
        for r in e["rows"][1:-1]:
            ax.plot(r["A_ZS"], r["A_KA"], "o", color=c, ms=3.5 if r.get("subset") else 5)
        ax.plot(zs[0], ka[0], "o", ms=10, mfc="white", mec=c, mew=1.5)
        ax.plot(zs[-1], ka[-1], "*", ms=14, color=c, mec="black", mew=0.5)
        if len(zs) > 1:
            ax.annotate("", xy=(zs[-1], ka[-1]), xytext=(zs[-2], ka[-2]), arrowprops={"arrowstyle": "->", "color": c})
    if shown:
        (x0, y0), (x1, y1) = np.min(lows, axis=0), np.max(highs, axis=0)
        pad_x, pad_y = max(2.0, 0.15 * (x1 - x0)), max(2.0, 0.15 * (y1 - y0))
        ax.set_xlim(max(0, x0 - pad_x), min(100, x1 + pad_x))
        ax.set_ylim(max(0, y0 - pad_y), min(100, y1 + pad_y))
        _iso_gm(ax)
    ax.set_xlabel("zero-shot retention A_ZS (%)")
    ax.set_ylabel("knowledge accumulation A_KA (%)")
    bars = _seeds_note(shown, "; bars: ± 1 sample std on each axis")
    ax.set_title("Continual pretraining trajectories\n(hollow = base model, star = after the last task, small = subset "
                 "evaluation)" + (f"\n{bars}" if bars else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no experiment with A_KA and A_ZS", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _seeds_note(evaluations: list[dict], what: str) -> str:
    """'mean of N seeds' + `what` when some experiment has several seeds, else nothing."""
    seeds = sorted({e.get("n_seeds", 1) for e in evaluations})
    return "" if seeds in ([], [1]) else f"mean of {' / '.join(map(str, seeds))} seeds{what}"


def plot_final_gm(evaluations: list[dict], path: str | Path) -> None:
    """Horizontal bars of each experiment's final GM (best at the top), the base model's GM as a dashed line;
    over several seeds the mean, with an error bar of one sample std each way."""
    rows = sorted((r for r in final_rows(evaluations) if "GM" in r), key=lambda r: r["GM"])
    colours = _colours(evaluations)
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * max(1, len(rows))), dpi=120)
    y = np.arange(len(rows))
    errors = [r.get("GM_std", 0.0) for r in rows]
    ax.barh(y, [r["GM"] for r in rows], color=[colours[r["experiment"]] for r in rows], height=0.6,
            xerr=errors if any(errors) else None, capsize=3)
    for i, r in enumerate(rows):
        gm = f"{r['GM']:.1f}" + (f" ± {r['GM_std']:.1f}" if "GM_std" in r else "")
        ax.text(r["GM"] + errors[i] + 0.5, i, f"{gm}  (A_KA {r['A_KA']:.1f}, A_ZS {r['A_ZS']:.1f})", va="center",
                fontsize=8)
    bases = sorted({r["GM_base"] for r in rows if "GM_base" in r})
    for b in bases:
        ax.axvline(b, color="black", ls="--", lw=1)
    if bases:
        ax.text(bases[0], -0.55, f" base model {bases[0]:.1f}", fontsize=8, va="bottom")
    if not rows:
        ax.text(0.5, 0.5, "no experiment with A_KA and A_ZS", transform=ax.transAxes, ha="center")
    ax.set_yticks(y, [f"{r['experiment']} ({r['method']})" for r in rows])
    ax.set_xlim(0, min(100, max([r["GM"] for r in rows] + bases + [1]) * 1.7))
    ax.set_ylim(-0.7, len(rows) - 0.4)
    ax.set_xlabel("final GM = sqrt(A_KA x A_ZS) (%)")
    bars = _seeds_note(evaluations, "; bars: ± 1 sample std")
    ax.set_title("Final GM of knowledge accumulation and zero-shot retention (dashed: base model)"
                 + (f"\n{bars}" if bars else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _columns(evaluation: dict) -> list[tuple[str, str]]:
    """(role, dataset) in display order: adaptation datasets, then evaluation-only ones, by name."""
    datasets = evaluation["datasets"]
    return sorted(((d["role"], n) for n, d in datasets.items()), key=lambda rn: (rn[0] != "adaptation", rn[1]))


def plot_heatmap(evaluation: dict, path: str | Path) -> None:
    """The evaluation matrix of one experiment: a row per model state (base model, after each task) and a column
    per dataset, then A_KA / A_ZS / GM; on the time-ordered world TiC's E[i][j] per dataset instead."""
    if evaluation.get("time"):
        _plot_time_matrices(evaluation, path)
        return
    columns = _columns(evaluation)
    rows = evaluation["rows"]
    names = [n for _, n in columns] + [k for k in SUMMARY if any(k in r for r in rows)]
    values = np.array([[r["scores"].get(n, r.get(n, np.nan)) for n in names] for r in rows], dtype=float)
    stds = [[spread(evaluation, "rows", i, "scores", n) if n in r["scores"] else spread(evaluation, "rows", i, n)
             for n in names] for i, r in enumerate(rows)]
    row_height = 0.38 * (1.4 if "std" in evaluation else 1)  # room for '±std' under each score
    fig, ax = plt.subplots(figsize=(2.4 + 0.7 * len(names), 2.0 + row_height * len(rows)), dpi=120)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    _annotate(ax, values, stds)
    labels = ["base model"] + [f"task {r['after_task']}" + (" *" if r.get("subset") else "") for r in rows[1:]]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    groups = [(role, [j for j, (r, _) in enumerate(columns) if r == role]) for role in dict.fromkeys(r for r, _ in columns)]
    if len(names) > len(columns):
        groups.append(("summary", list(range(len(columns), len(names)))))
    for _, members in groups[1:]:
        ax.axvline(members[0] - 0.5, color="white", lw=3)
    top = ax.secondary_xaxis("top")
    top.set_xticks([sum(m) / len(m) for _, m in groups], [GROUP_TITLES.get(r, r) for r, _ in groups], fontsize=7)
    top.tick_params(length=0)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="score (%)")
    note = "  (* = class-balanced subset)" if any(r.get("subset") for r in rows) else ""
    seeds = _seeds_note([evaluation], " ± sample std")
    ax.set_title(f"{evaluation['experiment']} ({evaluation['method']}): score per dataset after each task{note}"
                 + (f"\n({seeds})" if seeds else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _annotate(ax, values: np.ndarray, stds: list[list[float | None]]) -> None:
    """Each cell's score, and under it '±std' over seeds when there are several."""
    for (i, j), v in np.ndenumerate(values):
        if math.isnan(v):
            continue
        std = stds[i][j]
        text = f"{v:.0f}" + (f"\n±{std:.1f}" if std is not None else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=7 if std is None else 6,
                color="white" if v < 60 else "black")


def _plot_time_matrices(evaluation: dict, path: str | Path) -> None:
    """One panel per time-stepped dataset: its score on every time step (columns) before the stream and after
    training on each step (rows); the diagonal (in-domain) is outlined, below it is backward transfer."""
    times = evaluation["time"]
    fig, axes = plt.subplots(1, len(times), squeeze=False, dpi=120, layout="constrained",
                             figsize=(1.2 + 4.6 * len(times), 1.8 + 0.4 * (len(next(iter(times.values()))["matrix"]) + 1)))
    subset_rows = [r.get("subset", False) for r in evaluation["rows"]]
    for ax, (name, t) in zip(axes[0], times.items()):
        values = np.array([t["base"]] + t["matrix"], dtype=float)
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        stds = [[spread(evaluation, "time", name, "base", j) for j in range(values.shape[1])]]
        stds += [[spread(evaluation, "time", name, "matrix", i, j) for j in range(values.shape[1])]
                 for i in range(len(t["matrix"]))]
        _annotate(ax, values, stds)
        for i in range(min(len(t["matrix"]), len(t["steps"]))):
            ax.add_patch(plt.Rectangle((i - 0.5, i + 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        labels = ["base model"] + [f"after task {i + 1}" + (" *" if subset_rows[i + 1] else "") for i in range(len(t["matrix"]))]
        ax.set_yticks(range(len(values)), labels, fontsize=8)
        ax.set_xticks(range(len(t["steps"])), t["steps"], fontsize=8)
        ax.set_xlabel("evaluated on time step", fontsize=8)
        tic = evaluation.get("tic", {}).get(name, {})
        scores = ", ".join(f"{k.replace('_', '-')} {_fmt(tic[k], spread(evaluation, 'tic', name, k))}"
                           for k in ("in_domain", "backward", "forward") if k in tic)
        ax.set_title(f"{name} ({evaluation['datasets'][name]['metric']})\n{scores}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.01, label="score (%)")
    seeds = _seeds_note([evaluation], " ± sample std")
    note = (", * = subset" if any(subset_rows) else "") + (f", {seeds}" if seeds else "")
    fig.suptitle(f"{evaluation['experiment']} ({evaluation['method']}): TiC evaluation matrix E[i][j] "
                 f"(red = in-domain{note})", fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: float | None, std: float | None = None) -> str:
    """A score to one decimal, '± std' after it when known; '–' when missing."""
    if x is None:
        return "–"
    return f"{x:.1f}" + ("" if std is None else f" ± {std:.1f}")


def markdown_summary(evaluations: list[dict], images: dict[str, str] | None = None) -> str:
    """The headline tables over experiments, the Findings (rankings) and, per experiment, every dataset before,
    during and after the stream.

    Args:
        evaluations: the experiments' eval.json contents, averaged over seeds (`aggregate_seeds`).
        images: image name -> path relative to the summary ("trajectory", "gm", "heatmap/<experiment>").
    """
    images = images or {}
    lines = ["# clipflux report"]
    seeds = sorted({e.get("n_seeds", 1) for e in evaluations})
    if seeds not in ([], [1]):
        lines += ["", f"Every experiment ran {' / '.join(map(str, seeds))} seeds (`study.seeds`): each number is the "
                      "mean over seeds, ± the sample standard deviation (n - 1)."]
    fif = [e for e in evaluations if _complete(e)]
    lines += _fif_table(fif)
    lines += _tic_table(tic_rows(evaluations))
    lines += _budget_section(evaluations)
    settings = evaluations[0] if evaluations else {}
    if settings.get("validation"):
        lines += ["", "**Validation mode**: scores are on held-out training samples, not on test data."]
    if settings.get("subset", 1) < 1:
        lines += ["", f"During the stream datasets are evaluated on class-balanced subsets ({settings['subset']:g} of "
                      "each, at least 300 samples and 2 per class; marked *); before and after it on the full sets."]
    lines += [f"\n![{k}]({images[k]})" for k in ("trajectory", "gm") if k in images and fif]
    lines += findings_section(evaluations)
    for e in evaluations:
        lines += _experiment_section(e, images.get(f"heatmap/{e['experiment']}"))
    return "\n".join(lines) + "\n"


def _fif_table(fif: list[dict]) -> list[str]:
    """A_KA / A_ZS / GM of the base model and after the stream, and forgetting, one row per FiF experiment."""
    if not fif:
        return []
    lines = [
        "",
        "A_KA: mean score over adaptation datasets (knowledge accumulation); A_ZS: mean score over evaluation-only",
        "datasets (zero-shot retention); each dataset weighs the same, scored by accuracy (classification) or",
        "Recall@5 (retrieval, mean of image→text and text→image), as FiF. GM = sqrt(A_KA · A_ZS).",
        "Forgetting: per dataset, the best earlier score minus the final one (mean over each group).",
        "",
        "| experiment | method | tasks | A_KA base | A_KA final | A_ZS base | A_ZS final | GM base | GM final "
        "| forgetting (adapt.) | forgetting (eval.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in fif:
        last, forget = len(e["rows"]) - 1, e.get("forgetting", {})
        cells = [_fmt(e["rows"][i].get(k), spread(e, "rows", i, k)) for k in SUMMARY for i in (0, last)]
        cells += [_fmt(forget.get(k), spread(e, "forgetting", k)) for k in ("mean_adaptation", "mean_evaluation")]
        lines.append(f"| {e['experiment']} | {e['method']} | {last} | " + " | ".join(cells) + " |")
    return lines


def _tic_table(tic: list[dict]) -> list[str]:
    """TiC's transfer numbers, one row per (experiment, time-stepped dataset) as `tic_rows` gives them."""
    if not tic:
        return []
    keys = ("in_domain", "backward", "forward", "bwt", "fwt")
    return (["", "TiC (time-ordered world; accuracy, and Recall@1 for retrieval): in-domain = mean of E's diagonal,",
             "backward / forward = mean below / above it; BWT = mean change on earlier steps from when each was",
             "trained to the end, FWT = score on the next step minus the base model's (GEM; negative = harm).", "",
             "| experiment | method | dataset | metric | in-domain | backward | forward | BWT | FWT |",
             "|---|---|---|---|---|---|---|---|---|"]
            + [f"| {r['experiment']} | {r['method']} | {r['dataset']} | {r['metric']} | "
               + " | ".join(_fmt(r.get(k), r.get(f"{k}_std")) for k in keys) + " |" for r in tic])


def _budget_section(evaluations: list[dict]) -> list[str]:
    """The steps and samples per task each experiment got from the compute budget, and what they cost."""
    budgets = [(e, e["budget"]) for e in evaluations if e.get("budget")]
    if not budgets:
        return []
    lines = ["", "Compute budget per task (docs/budgets.md): each method trains the most steps whose cost fits",
             "what full finetuning spends on `train.samples_per_task` samples; cost = GFLOPs (FiF's count, 2 per",
             "multiply-add; the method's extra work such as EWC's Fisher amortised per sample), times memory",
             "relative to full finetuning for MAF.", "",
             "| experiment | method | budget | steps/task | samples/task | GFLOPs/sample | memory × | MAF/sample "
             "| budget used |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e, b in budgets:
        costs = [f"{b[k]:.3g}" if k in b else "–" for k in ("gflops_per_sample", "memory_multiplier", "maf_per_sample")]
        used = f"{100 * b['budget_used']:.1f}%" if "budget_used" in b else "–"
        lines.append(f"| {e['experiment']} | {e['method']} | {b['measure']} | {b['steps_per_task']} "
                     f"| {b['samples_per_task']} | " + " | ".join(costs) + f" | {used} |")
    return lines


def _experiment_section(e: dict, heatmap: str | None) -> list[str]:
    base, final = e["rows"][0], e["rows"][-1]
    lines = ["", f"## {e['experiment']}: per dataset", "",
             "| dataset | role | metric | split | samples | chance | base model | best | after the stream | change | forgetting |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    last = len(e["rows"]) - 1
    for role, name in _columns(e):
        d = e["datasets"][name]
        b, f = base["scores"][name], final["scores"][name]
        best = max(r["scores"][name] for r in e["rows"])
        spreads = [spread(e, "rows", i, "scores", name) for i in (0, last)] + [spread(e, "forgetting", name)]
        lines.append(f"| {name} | {role} | {d['metric']} | {d['split']} | {d['size']} | {_fmt(d['chance'])} "
                     f"| {_fmt(b, spreads[0])} | {_fmt(best)} | {_fmt(f, spreads[1])} | {f - b:+.1f} "
                     f"| {_fmt(e['forgetting'].get(name), spreads[2])} |")
    if "std" in e:
        lines += ["", "Best: the highest of the mean scores after each task; change: mean after the stream minus mean "
                      "of the base model; forgetting: the mean of every seed's forgetting."]
    if e.get("skipped"):
        lines += [""] + [f"Left out: {n} ({why})." for n, why in e["skipped"].items()]
    for name, t in e.get("time", {}).items():
        if name not in e.get("tic", {}):
            lines += ["", f"`{name}` has {len(t['steps'])} time steps but the stream {len(t['matrix'])} tasks: "
                          "TiC's metrics need one task per step."]
    if heatmap:
        lines += ["", f"![{e['experiment']} evaluation matrix]({heatmap})"]
    return lines
