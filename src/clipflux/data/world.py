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
DIGIT_NAMES = [str(d) for d in range(10)]  # numerals: the pool counts in words ("two"), never in digits

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


def _pick(rng: np.random.Generator, names, exclude: str | None = None) -> str:
    names = [n for n in names if n != exclude]
    return names[rng.integers(len(names))]


def _single_object(size: int, shape: str, colour: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One object at a random place and size; returns the image and the words that describe it."""
    bg = _pick(rng, BACKGROUNDS)
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    radius = rng.uniform(0.17, 0.28)
    image = render.render_objects(size, [(shape, colour, cx, cy, radius)], BACKGROUNDS[bg], rng)
    offsets = {"left": 0.5 - cx, "right": cx - 0.5, "top": 0.5 - cy, "bottom": cy - 0.5}
    side = max(offsets, key=offsets.get)
    where = _position_phrase(side if offsets[side] > 0.08 else "center")
    return image, {"colour": colour, "bg": bg, "size": "large" if radius > 0.225 else "small", "where": where}


def _caption(templates: tuple[str, ...], rng: np.random.Generator, **words: str) -> str:
    """A training caption: a random template filled with the class name (`cls`) and what the image shows."""
    return templates[rng.integers(len(templates))].format(**words)


_OBJECT_CAPTIONS = (
    "a photo of a {colour} {cls}",
    "a {size} {colour} {cls} {where}",
    "a {cls} on a {bg} background",
    "a {colour} {cls}",
    "a {cls}, {colour}, {where}",
    "a picture of a {size} {cls} on {bg}",
)


def _shape_maker(shapes: list[str], captions: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        image, words = _single_object(size, shapes[label], _pick(rng, COLORS), rng)
        return image, _caption(captions, rng, cls=shapes[label], **words), label, words

    return make


def _colour_maker(captions: tuple[str, ...]) -> Maker:
    colours = list(COLORS)

    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        shape = _pick(rng, KNOWN_SHAPES)
        image, words = _single_object(size, shape, colours[label], rng)
        return image, _caption(captions, rng, cls=colours[label], shape=shape, **words), label, dict(words, shape=shape)

    return make


def _texture_maker(captions: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        texture = render.TEXTURES[label]
        fg = _pick(rng, COLORS)
        bg = _pick(rng, COLORS, exclude=fg)
        image = render.render_texture(size, texture, COLORS[fg], COLORS[bg], rng)
        words = {"fg": fg, "bg": bg}
        return image, _caption(captions, rng, cls=texture, **words), label, words

    return make


@lru_cache(maxsize=1)
def _digits_by_class() -> list[np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    digits = load_digits()
    return [digits.images[digits.target == c] for c in range(10)]


def _digit_maker(captions: tuple[str, ...]) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        pool = _digits_by_class()[label]
        # Train and test draw from disjoint halves of scikit-learn's digits, so no test glyph leaks.
        half = len(pool) // 2
        lo, hi = (0, half) if split == "train" else (half, len(pool))
        glyph_index = int(rng.integers(lo, hi))
        fg, bg = _pick(rng, COLORS), _pick(rng, BACKGROUNDS)
        image = render.render_glyph(size, pool[glyph_index], COLORS[fg], BACKGROUNDS[bg], rng)
        words = {"fg": fg, "bg": bg}
        caption = _caption(captions, rng, cls=DIGIT_NAMES[label], **words)
        return image, caption, label, dict(words, glyph=glyph_index)

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
            _shape_maker(KNOWN_SHAPES, _OBJECT_CAPTIONS),
        ),
        DatasetSpec(
            "colours", "evaluation", "classification", tuple(COLORS),
            ("a photo of something {}.", "a {} object.", "a {} shape."),
            "colour recognition on pretraining shapes",
            _colour_maker(("a {cls} {shape}", "a {cls} object {where}")),
        ),
        DatasetSpec(
            "novel_shapes", "adaptation", "classification", tuple(NOVEL_SHAPES), _OBJECT_PROMPTS,
            "concepts the pretraining pool never shows", _shape_maker(NOVEL_SHAPES, _OBJECT_CAPTIONS),
        ),
        DatasetSpec(
            "textures", "adaptation", "classification", tuple(render.TEXTURES),
            ("a photo of a {} pattern.", "a {} texture.", "{}."),
            "textures (like DTD): full-image patterns never seen in pretraining",
            _texture_maker(("a photo of a {fg} and {bg} {cls} pattern", "a {cls} texture in {fg} on {bg}",
                            "{fg} {cls} on {bg}", "a {cls} pattern")),
        ),
        DatasetSpec(
            "digits", "adaptation", "classification", tuple(DIGIT_NAMES), digit_templates,
            "scikit-learn's handwritten digits (like MNIST): glyphs never seen in pretraining",
            _digit_maker(("a handwritten {cls} in {fg}", "the digit {cls}, {fg} on {bg}",
                          "a photo of the number {cls}", "a {fg} {cls} on a {bg} background")),
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
