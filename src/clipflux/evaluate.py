"""Zero-shot classification of a model on datasets of shards.

Class text embeddings are an ensemble over the dataset's prompt templates (mean of normalised
embeddings, renormalised), as CLIP does, computed once per model state and dataset.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clipflux.data.shards import ShardReader
from clipflux.models import image_size, to_input


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, tokenizer, classes: list[str], templates: list[str]) -> torch.Tensor:
    """(num_classes, dim) normalised text embeddings, one ensemble over templates per class."""
    rows = []
    for classname in classes:
        tokens = tokenizer([t.format(classname) for t in templates])
        emb = F.normalize(model.encode_text(tokens), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(model: torch.nn.Module, reader: ShardReader, indices: np.ndarray, batch_size: int) -> torch.Tensor:
    """(len(indices), dim) normalised image embeddings of the given samples."""
    size = image_size(model)
    out = []
    for start in range(0, len(indices), batch_size):
        images = np.stack([reader.read(int(i), ("png",))["png"] for i in indices[start : start + batch_size]])
        out.append(F.normalize(model.encode_image(to_input(images, size)), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer, reader: ShardReader, manifest: dict,
                       batch_size: int, indices: np.ndarray | None = None) -> float:
    """Top-1 zero-shot accuracy in percent on the chosen samples (all by default)."""
    model.eval()
    indices = np.arange(len(reader)) if indices is None else indices
    text = class_embeddings(model, tokenizer, manifest["classes"], manifest["templates"])
    predictions = (image_embeddings(model, reader, indices, batch_size) @ text.T).argmax(dim=1).numpy()
    return float(100.0 * np.mean(predictions == reader.labels[indices]))
