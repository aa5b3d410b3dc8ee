"""Zero-shot classification and image-text retrieval of a model on datasets of shards.

Classification (manifest `task: classification`): each class's text embedding is an ensemble over the
dataset's prompt templates (the mean of normalised embeddings, renormalised), as CLIP does; an image is
assigned the class whose embedding is most similar. `Evaluator` computes them once per model state and
reuses them for every dataset with the same classes and templates (TiC's per-step sets share them).

Retrieval (`task: retrieval`): sample i's image and its caption (`txt`) are a pair. Recall@k image->text is
the share of images whose caption ranks in the top k of all captions; text->image the reverse. A pair ranks
behind the candidates that score higher, and those that score the same unless they carry the same caption text
(`partner_ranks`): duplicate captions do not count against it, a collapsed model's ties do.
`R@k` is the mean of both directions, as FiF's `RecallAtK` reports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipflux.data.pipeline import open_dataset
from clipflux.data.shards import ShardReader
from clipflux.metrics import fif_scores, headline
from clipflux.models import image_size, load_weights, to_input
from clipflux.progress import progress
from clipflux.subsets import class_balanced_subset, validation_keys

RECALL_KS = (1, 5, 10)
TASKS = ("classification", "retrieval")
TIME_FIELD = "time_step"  # sample metadata (json, or its "meta") naming a sample's TiC time step


@torch.no_grad()
def text_embeddings(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """(len(texts), dim) normalised text embeddings."""
    out = [F.normalize(model.encode_text(tokenizer(list(texts[s : s + batch_size]))), dim=-1)
           for s in range(0, len(texts), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, tokenizer, classes: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """(num_classes, dim) normalised text embeddings, one ensemble over templates per class."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = text_embeddings(model, tokenizer, prompts, batch_size).view(len(classes), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


@torch.no_grad()
def image_embeddings(model: torch.nn.Module, reader: ShardReader, indices: np.ndarray, batch_size: int) -> torch.Tensor:
    """(len(indices), dim) normalised image embeddings of the given samples."""
    size = image_size(model)
    out = []
    for start in range(0, len(indices), batch_size):
        images = np.stack([reader.read(int(i), ("png",))["png"] for i in indices[start : start + batch_size]])
        out.append(F.normalize(model.encode_image(to_input(images, size)), dim=-1))
    return torch.cat(out)


def classification_metrics(images: torch.Tensor, classes: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy in percent of normalised image embeddings against class embeddings."""
    predictions = (images @ classes.T).argmax(dim=1).numpy()
    return {"acc": float(100.0 * np.mean(predictions == np.asarray(labels)))}


def partner_ranks(queries: torch.Tensor, candidates: torch.Tensor, captions: np.ndarray | None = None,
                  chunk: int = 1024) -> np.ndarray:
    """For each query i, how many candidates rank before its partner, candidate i: those scoring strictly higher,
    and those scoring the same unless they carry the partner's caption (`captions`: one id per pair, equal for
    captions of the same token ids, `caption_ids`; by default every pair its own).

    A duplicate caption is as right an answer as the partner's own, so a tie with it does not count against the
    pair; a tie with any other candidate does. So a model whose embeddings have collapsed (every score equal, or
    NaN) finds nothing, where counting only strictly higher scores gave it every pair at rank 0 (FiF's argsort
    breaks such ties by position, about as bad on average).
    """
    groups = torch.as_tensor(np.arange(len(queries)) if captions is None else np.asarray(captions))
    ranks = []
    for s in range(0, len(queries), chunk):
        # A NaN score (an overflowed tower) is the worst: it ranks behind everything and ties with other NaNs.
        sims = torch.nan_to_num(queries[s : s + chunk] @ candidates.T, nan=-math.inf)
        own = sims.diagonal(offset=s).unsqueeze(1)  # row r's partner is column s + r
        other = groups.unsqueeze(0) != groups[s : s + chunk].unsqueeze(1)  # candidates not carrying the caption
        ranks.append((sims > own).sum(dim=1) + ((sims == own) & other).sum(dim=1))
    return torch.cat(ranks).numpy()


def retrieval_metrics(images: torch.Tensor, texts: torch.Tensor, ks: Sequence[int] = RECALL_KS,
                      captions: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k in percent, image->text (`i2t_R@k`), text->image (`t2i_R@k`) and their mean (`R@k`).

    Args:
        images, texts: (N, dim) normalised embeddings; row i of each is a pair.
        captions: a caption id per pair (equal ids for captions the model reads alike: `caption_ids`), see
            `partner_ranks`.
    """
    i2t, t2i = partner_ranks(images, texts, captions), partner_ranks(texts, images, captions)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = float(100.0 * np.mean(i2t < k))
        out[f"t2i_R@{k}"] = float(100.0 * np.mean(t2i < k))
        out[f"R@{k}"] = (out[f"i2t_R@{k}"] + out[f"t2i_R@{k}"]) / 2
    return out


def caption_ids(tokens: torch.Tensor) -> np.ndarray:
    """One id per caption, equal for captions the model reads alike: the same token ids (the tokenizer lowercases,
    drops punctuation spacing and truncates to the context, so "A red circle." and "a red circle ." are one)."""
    return np.unique(np.asarray(tokens), axis=0, return_inverse=True)[1].reshape(-1)


class Evaluator:
    """Evaluates one model, state after state, on any number of datasets.

    Class text embeddings are computed once per model state: `load` brings in the next state's weights and
    empties the cache.

    Args:
        model: the CLIP model (weights are loaded into it in place).
        tokenizer: its open_clip tokenizer.
        batch_size: images or texts per forward pass.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self._classes: dict[tuple, torch.Tensor] = {}

    def load(self, path: str | Path) -> None:
        """Evaluate the weights in `path` from now on."""
        load_weights(self.model, path)
        self.model.eval()
        self._classes.clear()

    def class_embeddings(self, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """The template-ensembled class embeddings of the current state (cached)."""
        key = (tuple(classes), tuple(templates))
        if key not in self._classes:
            self._classes[key] = class_embeddings(self.model, self.tokenizer, classes, templates, self.batch_size)
        return self._classes[key]

    @torch.no_grad()
    def evaluate(self, reader: ShardReader, manifest: dict, indices: np.ndarray,
                 groups: Sequence[Hashable] | None = None) -> dict:
        """Metrics of the current state on the chosen samples of one dataset.

        Args:
            reader: the dataset split.
            manifest: its manifest (`task`; `classes` and `templates` for classification).
            indices: the samples to evaluate.
            groups: optionally a group per chosen sample (a TiC time step): metrics are also computed per
                group, retrieval within each group's pairs only, as TiC's dynamic retrieval does.

        Returns:
            {"metrics": {...}, "n": samples} plus "groups": {group: {...}} when groups are given.
        """
        task = manifest["task"]
        if task not in TASKS:
            raise ValueError(f"{manifest.get('name')}: cannot evaluate task {task!r}; known: {TASKS}")
        indices = np.asarray(indices)
        images = image_embeddings(self.model, reader, indices, self.batch_size)
        if task == "classification":
            classes, labels = self.class_embeddings(manifest["classes"], manifest["templates"]), reader.labels[indices]
        else:
            texts = [reader.read(int(i), ("txt",))["txt"] for i in indices]
            captions = text_embeddings(self.model, self.tokenizer, texts, self.batch_size)
            same = caption_ids(self.tokenizer(texts))

        def score(rows: np.ndarray) -> dict[str, float]:
            if task == "classification":
                return classification_metrics(images[rows], classes, labels[rows])
            return retrieval_metrics(images[rows], captions[rows], captions=same[rows])

        out = {"metrics": score(np.arange(len(indices))), "n": int(len(indices))}
        if groups is not None:
            groups = np.asarray(groups)
            out["groups"] = {g.item() if hasattr(g, "item") else g: score(np.flatnonzero(groups == g))
                             for g in np.unique(groups)}
        return out


def zero_shot_accuracy(model: torch.nn.Module, tokenizer, reader: ShardReader, manifest: dict,
                       batch_size: int, indices: np.ndarray | None = None) -> float:
    """Top-1 zero-shot accuracy in percent on the chosen samples (all by default)."""
    model.eval()
    indices = np.arange(len(reader)) if indices is None else indices
    text = class_embeddings(model, tokenizer, manifest["classes"], manifest["templates"], batch_size)
    return classification_metrics(image_embeddings(model, reader, indices, batch_size), text, reader.labels[indices])["acc"]


@dataclass(frozen=True)
class EvalSet:
    """One dataset as the evaluation reads it: which split, which samples, and their time steps if any."""

    name: str
    manifest: dict
    reader: ShardReader
    split: str
    full: np.ndarray  # sample indices evaluated before the stream and after the last task
    subset: np.ndarray  # sample indices evaluated after the tasks in between
    groups: np.ndarray | None  # the time step of every sample of `reader`, or None

    def indices(self, full: bool) -> np.ndarray:
        return self.full if full else self.subset


def held_out_split(manifest: dict, validation: bool) -> str | None:
    """The split a dataset is evaluated on, or None when it has none that may be used.

    Normally the test split. In validation mode never the test split: adaptation datasets are evaluated on
    the validation part of their training split; evaluation-only datasets, never trained on, on a
    "validation" or "train" split if they have one.
    """
    splits = manifest["splits"]
    if not validation:
        return "test" if "test" in splits else None
    candidates = ("train",) if manifest["role"] == "adaptation" else ("validation", "train")
    return next((s for s in candidates if s in splits), None)


def sample_groups(reader: ShardReader, field: str = TIME_FIELD) -> np.ndarray | None:
    """The value of metadata `field` (in the sample json or its "meta") for every sample, or None if absent."""
    def value(i: int):
        meta = reader.read(i, ("json",))["json"]
        return meta.get(field, (meta.get("meta") or {}).get(field))

    if len(reader) == 0 or value(0) is None:
        return None
    values = [value(i) for i in range(len(reader))]
    if any(v is None for v in values):
        raise ValueError(f"{reader.shard_dir}: some samples have metadata {field!r} and some do not")
    return np.asarray(values)


def evaluation_sets(shards: str | Path, manifests: dict[str, dict], seed: int, fraction: float,
                    validation: bool = False, split: float = 0.8,
                    roles: tuple[str, ...] = ("adaptation", "evaluation")) -> tuple[dict[str, EvalSet], dict[str, str]]:
    """Every dataset of the given roles (FiF's adaptation and evaluation-only ones by default; "tic" for the
    time-ordered world) with the samples the evaluation reads. Subsets are FiF's; TiC's sets are always full.

    Args:
        shards: the shards folder.
        manifests: dataset name -> manifest.
        seed: the evaluation seed (subsets and validation split).
        fraction: FiF's subset fraction for evaluations during the stream.
        validation: FiF's validation mode (see `held_out_split`).
        split: the training share of the validation split.
        roles: which datasets to evaluate, by role.

    Returns:
        The evaluation sets by name, and the datasets left out with the reason.
    """
    sets, skipped = {}, {}
    for name, manifest in sorted(manifests.items()):
        if manifest["role"] not in roles or manifest["task"] not in TASKS:
            continue
        which = held_out_split(manifest, validation)
        if which is None:
            skipped[name] = "no validation or train split (test data is never used in validation mode)" if validation \
                else "no test split"
            continue
        reader = open_dataset(shards, name, which)
        full = np.arange(len(reader))
        if validation and manifest["role"] == "adaptation":
            held = validation_keys(seed, name, reader.keys, reader.labels.tolist(), split)
            full = np.array([i for i, k in enumerate(reader.keys) if k in held], dtype=np.int64)
        groups = sample_groups(reader)
        if protocol_of(manifest) == "tic":  # TiC evaluates every step in full: E's rows must be comparable
            subset = full
        else:
            strata = reader.labels if groups is None else _pairs(reader.labels, groups)  # balanced over time steps too
            subset = full[class_balanced_subset(strata[full], fraction, seed, name)]
        sets[name] = EvalSet(name, manifest, reader, which, full, subset, groups)
    return sets, skipped


class Preloaded:
    """A reader whose chosen samples are decoded once and then served from RAM; anything else goes to `reader`.

    Args:
        reader: a `ShardReader` or `StreamedShardReader`.
        indices: the samples to keep.
        exts: their members to keep ("png", "txt", ...).
    """

    def __init__(self, reader, indices: np.ndarray, exts: tuple[str, ...]):
        self.reader = reader
        self.samples = {int(i): reader.read(int(i), exts) for i in indices}

    def __getattr__(self, name: str):
        return getattr(self.reader, name)  # keys, labels, manifest, ...

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, index: int, exts: tuple[str, ...] = ("png", "txt", "json")) -> dict:
        kept = self.samples.get(int(index))
        if kept is None or any(ext not in kept for ext in exts):
            return self.reader.read(index, exts)
        return {"key": kept["key"], **{ext: kept[ext] for ext in exts}}


def preload(sets: dict[str, EvalSet]) -> dict[str, EvalSet]:
    """The same sets with every image (and retrieval caption) they evaluate decoded into RAM once
    (`evaluate.preload`, as FiF offers), so that later model states skip reading and decoding the shards."""
    out = {}
    for name, s in sets.items():
        exts = ("png", "txt") if s.manifest["task"] == "retrieval" else ("png",)
        out[name] = dataclasses.replace(s, reader=Preloaded(s.reader, s.full, exts))
    return out


def _pairs(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """One integer per distinct (label, group) pair."""
    _, group_ids = np.unique(groups, return_inverse=True)
    return labels.astype(np.int64) * (group_ids.max() + 1) + group_ids


def protocol_of(manifest: dict) -> str:
    """Whose headline metric a dataset reports: TiC's for the time-ordered world (role "tic"), else FiF's."""
    return "tic" if manifest["role"] == "tic" else "fif"


def evaluate_state(evaluator: Evaluator, sets: dict[str, EvalSet], full: bool, desc: str) -> dict:
    """One row of the evaluation matrix: every dataset, on its full samples or its subset.

    Returns:
        {"subset", "n", "metrics", "scores" (headline per dataset), A_KA / A_ZS / GM, "time"}, where
        "time" holds {dataset: {step: headline score}} for datasets whose samples carry a time step.
    """
    row: dict = {"subset": any(len(s.indices(full)) < len(s.full) for s in sets.values()),
                 "n": {}, "metrics": {}, "scores": {}, "time": {}}
    roles = {name: s.manifest["role"] for name, s in sets.items()}
    bar = progress(list(sets.values()), desc=desc, unit="dataset")
    for s in bar:
        indices = s.indices(full)
        result = evaluator.evaluate(s.reader, s.manifest, indices, None if s.groups is None else s.groups[indices])
        task, protocol = s.manifest["task"], protocol_of(s.manifest)
        row["n"][s.name], row["metrics"][s.name] = result["n"], result["metrics"]
        row["scores"][s.name] = headline(task, result["metrics"], protocol)
        if "groups" in result:
            row["time"][s.name] = {str(g): headline(task, m, protocol) for g, m in result["groups"].items()}
        summary = fif_scores(row["scores"], {n: roles[n] for n in row["scores"]})
        bar.set_postfix(refresh=False, **{k: f"{v:.1f}" for k, v in summary.items()})
    row.update(fif_scores(row["scores"], roles))
    return row
