"""Reports: the A_KA-versus-A_ZS trajectory plot (FiF's main figure) and a markdown summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def trajectory_rows(evaluations: list[dict]) -> list[dict]:
    """One flat row per (experiment, task): the data behind the trajectory plot and DVC plots."""
    return [
        {"experiment": e["experiment"], "task": r["after_task"], "A_KA": round(r["A_KA"], 4),
         "A_ZS": round(r["A_ZS"], 4), "GM": round(r["GM"], 4)}
        for e in evaluations
        for r in e["rows"]
    ]


def plot_trajectories(evaluations: list[dict], path: str | Path) -> None:
    """Each experiment's path through (A_ZS, A_KA) space, from the base model (hollow) to the end."""
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for e in evaluations:
        zs = [r["A_ZS"] for r in e["rows"]]
        ka = [r["A_KA"] for r in e["rows"]]
        (line,) = ax.plot(zs, ka, marker="o", markersize=4, label=f"{e['experiment']} ({e['method']})")
        ax.plot(zs[0], ka[0], marker="o", markersize=9, markerfacecolor="white", color=line.get_color())
        ax.annotate("", xy=(zs[-1], ka[-1]), xytext=(zs[-2], ka[-2]) if len(zs) > 1 else (zs[0], ka[0]),
                    arrowprops={"arrowstyle": "->", "color": line.get_color()})
    ax.set_xlabel("zero-shot retention A_ZS (%)")
    ax.set_ylabel("knowledge accumulation A_KA (%)")
    ax.set_title("Continual pretraining trajectories (hollow = base model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def markdown_summary(evaluations: list[dict]) -> str:
    """The headline table over experiments and, per experiment, every dataset before and after the stream."""
    lines = [
        "# clipflux report",
        "",
        "A_KA: mean zero-shot accuracy over adaptation datasets (knowledge accumulation).",
        "A_ZS: mean zero-shot accuracy over evaluation-only datasets (zero-shot retention). GM = sqrt(A_KA * A_ZS).",
        "",
        "| experiment | method | tasks | A_KA base | A_KA final | A_ZS base | A_ZS final | GM final |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in evaluations:
        base, final = e["rows"][0], e["rows"][-1]
        lines.append(
            f"| {e['experiment']} | {e['method']} | {len(e['rows']) - 1} | {_fmt(base['A_KA'])} | {_fmt(final['A_KA'])} "
            f"| {_fmt(base['A_ZS'])} | {_fmt(final['A_ZS'])} | {_fmt(final['GM'])} |"
        )
    for e in evaluations:
        base, final = e["rows"][0], e["rows"][-1]
        lines += ["", f"## {e['experiment']}: per dataset", "",
                  "| dataset | role | chance | base model | after the stream | change |", "|---|---|---|---|---|---|"]
        for name in sorted(e["roles"], key=lambda n: (e["roles"][n], n)):
            b, f = base["scores"][name], final["scores"][name]
            lines.append(f"| {name} | {e['roles'][name]} | {_fmt(e['chance'][name])} | {_fmt(b)} | {_fmt(f)} | {f - b:+.1f} |")
    lines += ["", "![trajectories](trajectory.png)", ""]
    return "\n".join(lines)
