"""The synthetic world: a captioned pretraining pool, adaptation datasets and evaluation-only datasets.

Every sample is a pure function of `(world seed, dataset, split, index)`: its generator is derived from
those four numbers, so datasets can be generated in any order, in parallel, or one sample at a time,
and always come out the same.

The pool teaches a tiny CLIP transferable concepts (shapes, colours, sizes, positions, backgrounds,
counts). Adaptation datasets bring what the pool never shows (new shapes, textures, digits); the
evaluation-only datasets measure how much of the pool's knowledge survives adaptation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

import numpy as np

from clipflux.data import render
from clipflux.data.render import BACKGROUNDS, COLORS, POSITIONS, SIZES

Role = Literal["pretraining", "adaptation", "evaluation"]
Task = Literal["captions", "classification"]
SPLIT_IDS = {"train": 0, "test": 1}

KNOWN_SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar"]
NOVEL_SHAPES = ["hexagon", "heart", "crescent", "arrow", "hourglass", "semicircle", "chevron", "saltire"]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# A sample: (image, caption, class index or -1, extra metadata).
Sample = tuple[np.ndarray, str, int, dict]
Maker = Callable[[int, int, str, np.random.Generator], Sample]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its role in the study, its classes, prompt templates and how to draw a sample."""

    name: str
    role: Role
    task: Task
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    shift: str
    make: Maker

    @property
    def splits(self) -> tuple[str, ...]:
        """Evaluation-only datasets have no training split; the pool has no test split."""
        return {"pretraining": ("train",), "adaptation": ("train", "test"), "evaluation": ("test",)}[self.role]

    def card(self) -> dict:
        """The JSON-serialisable description of this dataset (its dataset card, without counts)."""
        return {
            "name": self.name,
            "role": self.role,
            "task": self.task,
            "classes": list(self.classes),
            "templates": list(self.templates),
            "shift": self.shift,
        }


def sample_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """The generator of one sample, derived from (seed, dataset, split, index)."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode()), SPLIT_IDS[split], index])


# --------------------------------------------------------------------------------------------------
# Pretraining pool


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _position_phrase(pos: str) -> str:
    return "in the center" if pos == "center" else f"on the {pos}"


_SINGLE_CAPTIONS = (
    "a {size} {colour} {shape} {where}",
    "a photo of a {colour} {shape}",
    "a {shape}",
    "a photo of a {shape}.",
    "a {colour} {shape} on a {bg} background",
    "a picture of a {size} {shape}",
    "{colour} {shape}, {size}, {where}",
    "there is a {colour} {shape} {where}",
    "a {colour} object",
    "something {colour} {where}",
    "a {size} {shape} {where} on {bg}",
)
_MULTI_CAPTIONS = (
    "{count} {colour} {shapes}",
    "a photo of {count} {shapes}",
    "{count} {shapes} on a {bg} background",
    "a picture of {count} {colour} {shapes}",
)


def _pool_sample(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    shape = KNOWN_SHAPES[rng.integers(len(KNOWN_SHAPES))]
    colour = list(COLORS)[rng.integers(len(COLORS))]
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    count = int(rng.choice([1, 1, 1, 2, 3]))
    if count == 1:
        size_name = list(SIZES)[rng.integers(len(SIZES))]
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        cx, cy = np.asarray(POSITIONS[pos]) + rng.uniform(-0.04, 0.04, size=2)
        objects = [(shape, colour, cx, cy, SIZES[size_name] * rng.uniform(0.9, 1.1))]
        template = _SINGLE_CAPTIONS[rng.integers(len(_SINGLE_CAPTIONS))]
        caption = template.format(size=size_name, colour=colour, shape=shape, where=_position_phrase(pos), bg=bg)
        meta = {"shape": shape, "colour": colour, "size": size_name, "position": pos, "background": bg, "count": 1}
    else:
        cells = rng.permutation(4)[:count]  # quadrants, so objects never overlap
        objects = [
            (shape, colour, 0.27 + 0.46 * (c % 2) + rng.uniform(-0.03, 0.03), 0.27 + 0.46 * (c // 2), 0.13)
            for c in cells
        ]
        template = _MULTI_CAPTIONS[rng.integers(len(_MULTI_CAPTIONS))]
        word = {2: "two", 3: "three"}[count]
        caption = template.format(count=word, colour=colour, shapes=_plural(shape), bg=bg)
        meta = {"shape": shape, "colour": colour, "background": bg, "count": count}
    return render.render_objects(size, objects, BACKGROUNDS[bg], rng), caption, -1, meta


# --------------------------------------------------------------------------------------------------
# Classification datasets


def _single_object(size: int, shape: str, colour: str, rng: np.random.Generator) -> np.ndarray:
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    radius = rng.uniform(0.17, 0.28)
    return render.render_objects(size, [(shape, colour, cx, cy, radius)], BACKGROUNDS[bg], rng)


def _caption(templates: tuple[str, ...], classname: str, rng: np.random.Generator) -> str:
    return templates[rng.integers(len(templates))].format(classname)


def _shape_maker(shapes: list[str], templates: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        colour = list(COLORS)[rng.integers(len(COLORS))]
        image = _single_object(size, shapes[label], colour, rng)
        return image, _caption(templates, shapes[label], rng), label, {"colour": colour}

    return make


def _colour_maker(templates: tuple[str, ...]) -> Maker:
    colours = list(COLORS)

    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        shape = KNOWN_SHAPES[rng.integers(len(KNOWN_SHAPES))]
        image = _single_object(size, shape, colours[label], rng)
        return image, _caption(templates, colours[label], rng), label, {"shape": shape}

    return make


def _texture_maker(templates: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        texture = render.TEXTURES[label]
        return render.render_texture(size, texture, rng), _caption(templates, texture, rng), label, {}

    return make


@lru_cache(maxsize=1)
def _digits_by_class() -> list[np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    digits = load_digits()
    return [digits.images[digits.target == c] for c in range(10)]


def _digit_maker(templates: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        pool = _digits_by_class()[label]
        # Train and test draw from disjoint halves of scikit-learn's digits, so no test glyph leaks.
        half = len(pool) // 2
        lo, hi = (0, half) if split == "train" else (half, len(pool))
        glyph_index = int(rng.integers(lo, hi))
        image = render.render_glyph(size, pool[glyph_index], rng)
        return image, _caption(templates, DIGIT_NAMES[label], rng), label, {"glyph": glyph_index}

    return make


_OBJECT_PROMPTS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")


def build_world() -> dict[str, DatasetSpec]:
    """The datasets of the embedded default, by name."""
    digit_templates = ("a photo of the number {}.", "the digit {}.", "a handwritten {}.")
    specs = [
        DatasetSpec(
            "pool", "pretraining", "captions", (), (),
            "captioned shapes: objects, colours, sizes, positions, backgrounds, counts", _pool_sample,
        ),
        DatasetSpec(
            "shapes", "evaluation", "classification", tuple(KNOWN_SHAPES), _OBJECT_PROMPTS,
            "held-out renders of pretraining concepts (the ImageNet of this world)",
            _shape_maker(KNOWN_SHAPES, _OBJECT_PROMPTS),
        ),
        DatasetSpec(
            "colours", "evaluation", "classification", tuple(COLORS),
            ("a photo of something {}.", "a {} object.", "a {} shape."),
            "colour recognition on pretraining shapes", _colour_maker(("a {} object.",)),
        ),
        DatasetSpec(
            "novel_shapes", "adaptation", "classification", tuple(NOVEL_SHAPES), _OBJECT_PROMPTS,
            "concepts the pretraining pool never shows", _shape_maker(NOVEL_SHAPES, _OBJECT_PROMPTS),
        ),
        DatasetSpec(
            "textures", "adaptation", "classification", tuple(render.TEXTURES),
            ("a photo of a {} pattern.", "a {} texture.", "{}."),
            "textures (like DTD): full-image patterns never seen in pretraining",
            _texture_maker(("a photo of a {} pattern.", "a {} texture.")),
        ),
        DatasetSpec(
            "digits", "adaptation", "classification", tuple(DIGIT_NAMES), digit_templates,
            "scikit-learn's handwritten digits (like MNIST): glyphs never seen in pretraining",
            _digit_maker(digit_templates),
        ),
    ]
    return {s.name: s for s in specs}


def generate(spec: DatasetSpec, split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Generate one split of one dataset.

    Args:
        spec: the dataset.
        split: "train" or "test".
        count: samples per class for classification datasets, samples in all for the captioned pool.
        size: image side in pixels.
        seed: the world seed.

    Returns:
        Images as a (N, size, size, 3) uint8 array and one record per image (key, caption, label, class
        name and generator metadata), in a fixed order (class-major for classification datasets).
    """
    labels = [-1] * count if spec.task == "captions" else [c for c in range(len(spec.classes)) for _ in range(count)]
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    records = []
    for index, label in enumerate(labels):
        image, caption, label, meta = spec.make(size, label, split, sample_rng(seed, spec.name, split, index))
        images[index] = image
        records.append(
            {
                "key": f"{spec.name}-{split}-{index:06d}",
                "caption": caption,
                "label": label,
                "classname": spec.classes[label] if label >= 0 else None,
                "meta": meta,
            }
        )
    return images, records
