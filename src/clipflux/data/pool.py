"""The pretraining pool: captioned images of the concepts a base model should know.

Objects (eight known shapes), colours, sizes, positions, backgrounds and counts (one to three), with
varied caption phrasing. No adaptation concept (new shapes, textures, digits, symbols, styles) appears
in an image or a caption here.
"""

from __future__ import annotations

import numpy as np

from clipflux.data import render
from clipflux.data.render import BACKGROUNDS, COLORS, POSITIONS, SIZES
from clipflux.data.spec import Sample

KNOWN_SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar"]


def pick(rng: np.random.Generator, names, exclude: str | None = None) -> str:
    """A uniformly drawn name (of a dict's keys or a list), optionally excluding one."""
    names = [n for n in names if n != exclude]
    return names[rng.integers(len(names))]


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def position_phrase(pos: str) -> str:
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


def pool_sample(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """One captioned pretraining image: 1-3 known shapes with colour, size, position and background."""
    shape, colour, bg = pick(rng, KNOWN_SHAPES), pick(rng, COLORS), pick(rng, BACKGROUNDS)
    count = int(rng.choice([1, 1, 1, 2, 3]))
    if count == 1:
        size_name, pos = pick(rng, SIZES), pick(rng, POSITIONS)
        cx, cy = np.asarray(POSITIONS[pos]) + rng.uniform(-0.04, 0.04, size=2)
        objects = [(shape, colour, cx, cy, SIZES[size_name] * rng.uniform(0.9, 1.1))]
        template = _SINGLE_CAPTIONS[rng.integers(len(_SINGLE_CAPTIONS))]
        caption = template.format(size=size_name, colour=colour, shape=shape, where=position_phrase(pos), bg=bg)
        meta = {"shape": shape, "colour": colour, "size": size_name, "position": pos, "background": bg, "count": 1}
    else:
        cells = rng.permutation(4)[:count]  # quadrants, so objects never overlap
        objects = [
            (shape, colour, 0.27 + 0.46 * (c % 2) + rng.uniform(-0.03, 0.03), 0.27 + 0.46 * (c // 2), 0.13)
            for c in cells
        ]
        template = _MULTI_CAPTIONS[rng.integers(len(_MULTI_CAPTIONS))]
        word = {2: "two", 3: "three"}[count]
        caption = template.format(count=word, colour=colour, shapes=plural(shape), bg=bg)
        meta = {"shape": shape, "colour": colour, "background": bg, "count": count}
    return render.render_objects(size, objects, BACKGROUNDS[bg], rng), caption, -1, meta
