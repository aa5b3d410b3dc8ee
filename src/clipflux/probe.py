"""A linear-probe reference: how well a model's frozen image features separate each adaptation dataset's classes.

Zero-shot accuracy (what A_KA averages) asks whether the text tower names a class where the image tower puts it;
a linear probe asks only whether the image features separate the classes at all. Its accuracy beside the
zero-shot one tells how much of what a method has not yet accumulated is already in the image features.

As CLIP's linear-probe evaluation (Radford et al. 2021, arXiv 2103.00020, Sec. 3.2 and App. A.3): an
L2-regularised multinomial logistic regression on the normalised image embeddings of a dataset's training split,
fitted by L-BFGS (CLIP: scikit-learn's, up to 1000 iterations, its regularisation strength chosen on a
validation split; here one `weight_decay` for every dataset), scored on the test split. The fit is full-batch
and deterministic: the same features give the same probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipflux.data.pipeline import load_datasets, open_dataset
from clipflux.evaluate import classification_metrics, class_embeddings, image_embeddings
from clipflux.progress import progress


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, weight_decay: float = 1e-4,
              max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (classes, dim), bias (classes,)) minimising mean cross-entropy + weight_decay / 2 * ||weight||^2."""
    features, labels = features.double(), labels.long()
    weight = torch.zeros(classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach(), bias.detach()


def probe_accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of the probe on features."""
    predictions = (features.double() @ weight.T + bias).argmax(dim=1).numpy()
    return float(100.0 * np.mean(predictions == np.asarray(labels)))


@dataclass(frozen=True)
class ProbeRow:
    """One dataset: zero-shot and linear-probe test accuracy (percent), and the samples each split gave."""

    dataset: str
    zero_shot: float
    linear_probe: float
    train: int
    test: int


def classification_datasets(shards: str | Path, role: str = "adaptation") -> list[str]:
    """The datasets of a shards folder with a classification task, a train and a test split, and the given role."""
    return [name for name, manifest in sorted(load_datasets(shards).items())
            if manifest.get("task") == "classification" and manifest.get("role") == role
            and {"train", "test"} <= set(manifest["splits"])]


@torch.no_grad()
def linear_probe(model: torch.nn.Module, tokenizer, shards: str | Path, datasets: Sequence[str],
                 weight_decay: float = 1e-4, batch_size: int = 256) -> list[ProbeRow]:
    """Per dataset, the model's zero-shot accuracy and its linear probe's, both on the whole test split."""
    model.eval()
    rows = []
    for name in progress(datasets, desc="linear probe", unit="dataset"):
        train, test = open_dataset(shards, name, "train"), open_dataset(shards, name, "test")
        manifest = test.manifest
        train_features = image_embeddings(model, train, np.arange(len(train)), batch_size)
        test_features = image_embeddings(model, test, np.arange(len(test)), batch_size)
        text = class_embeddings(model, tokenizer, manifest["classes"], manifest["templates"], batch_size)
        weight, bias = fit_probe(train_features, torch.as_tensor(train.labels), len(manifest["classes"]), weight_decay)
        rows.append(ProbeRow(name, classification_metrics(test_features, text, test.labels)["acc"],
                             probe_accuracy(weight, bias, test_features, test.labels), len(train), len(test)))
    return rows


def table(rows: Sequence[ProbeRow]) -> str:
    """A markdown table of the rows with their means."""
    lines = ["| dataset | zero-shot | linear probe | train | test |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.dataset} | {r.zero_shot:.1f} | {r.linear_probe:.1f} | {r.train} | {r.test} |" for r in rows]
    if rows:
        lines.append(f"| mean | {np.mean([r.zero_shot for r in rows]):.1f} | "
                     f"{np.mean([r.linear_probe for r in rows]):.1f} | | |")
    return "\n".join(lines)
