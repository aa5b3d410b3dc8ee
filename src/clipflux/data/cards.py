"""Dataset cards and example grids, like FiF's dataset visualisations (`clipflux datasets`).

For every dataset under a shards folder: a markdown card (role, task, the shift it represents, classes,
counts per split, prompt templates, example captions) and one PNG grid of examples per split.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipflux.data.pipeline import load_datasets, open_dataset  # noqa: E402
from clipflux.data.shards import ShardReader  # noqa: E402

ROWS, COLS = 8, 6


def _examples(reader: ShardReader, classes: list[str]) -> list[tuple[str, list[int]]]:
    """(row title, sample indices) per grid row: one row per class, or rows of consecutive samples."""
    if classes and (reader.labels >= 0).any():
        rows = [(c, np.flatnonzero(reader.labels == i)[:COLS].tolist()) for i, c in enumerate(classes)]
        return [r for r in rows if r[1]][:ROWS]
    return [("", list(range(r * COLS, min((r + 1) * COLS, len(reader))))) for r in range(min(ROWS, len(reader) // COLS))]


def plot_grid(reader: ShardReader, classes: list[str], title: str, path: Path) -> None:
    """A grid of example images: rows are classes (or runs of samples), titles are labels or captions."""
    rows = _examples(reader, classes)
    fig, axes = plt.subplots(len(rows), COLS, figsize=(COLS * 1.3, len(rows) * 1.45), dpi=100, squeeze=False)
    for r, (label, indices) in enumerate(rows):
        for c in range(COLS):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(indices):
                sample = reader.read(indices[c], ("png", "txt"))
                ax.imshow(sample["png"], interpolation="nearest")
                text = label if label else sample["txt"]
                ax.set_title(text if len(text) <= 22 else text[:21] + "…", fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def card(manifest: dict) -> str:
    """The markdown card of one dataset."""
    lines = [f"## {manifest['name']}", "", f"- role: {manifest['role']}; task: {manifest['task']}",
             f"- shift: {manifest['shift']}"]
    for split, info in manifest["splits"].items():
        lines.append(f"- {split}: {info['count']} samples in {len(info['shards'])} shards")
    if manifest["classes"]:
        lines.append(f"- classes ({len(manifest['classes'])}): " + ", ".join(manifest["classes"]))
    if manifest["templates"]:
        lines.append("- prompt templates: " + " | ".join(f"`{t}`" for t in manifest["templates"]))
    lines += ["", " ".join(f"![{split}]({manifest['name']}-{split}.png)" for split in manifest["splits"]), ""]
    return "\n".join(lines)


def write_cards(shards: Path, out: Path) -> Path:
    """Write `out/README.md` with every dataset's card and `out/<dataset>-<split>.png` grids."""
    out.mkdir(parents=True, exist_ok=True)
    manifests = load_datasets(shards)
    parts = ["# Datasets of the synthetic world", "",
             "| dataset | role | task | classes | samples | shift |", "|---|---|---|---|---|---|"]
    for name, m in manifests.items():
        total = sum(s["count"] for s in m["splits"].values())
        parts.append(f"| {name} | {m['role']} | {m['task']} | {len(m['classes'])} | {total} | {m['shift']} |")
    parts.append("")
    for name, manifest in manifests.items():
        for split in manifest["splits"]:
            reader = open_dataset(shards, name, split, verify=False)
            plot_grid(reader, manifest["classes"], f"{name} / {split}", out / f"{name}-{split}.png")
        parts.append(card(manifest))
    (out / "README.md").write_text("\n".join(parts))
    return out / "README.md"
