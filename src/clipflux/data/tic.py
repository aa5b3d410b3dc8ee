"""The TiC-style time-ordered world: six time steps whose concepts drift, appear and fade.

Like TiC-DataComp (whose first step spans 2014-2016, then one step per year), the first step spans
several years and each later step is one year. Over time the rendering style drifts (flat fills, then
paintings and clipart, then sketches and inverted renders), the backgrounds change, new concepts appear
(hexagon, heart, crescent, arrow) and some fade out (bar, cross). Every sample's metadata holds its
`timestamp` (a year) and `step`.

Datasets: `tic` (the training pool, captioned, streamed by step: `tic+++2017`), and per step `tic_cls_<step>`
(dynamic classification over the concepts alive at that step) and `tic_ret_<step>` (dynamic retrieval).
"""

from __future__ import annotations

import numpy as np

from clipflux.data import render
from clipflux.data.pool import KNOWN_SHAPES, pick
from clipflux.data.render import BACKGROUNDS, COLORS
from clipflux.data.world import DatasetSpec, Maker, Sample

STEPS = ["2014-2016", "2017", "2018", "2019", "2020", "2021"]
FIRST_YEARS = (2014, 2015, 2016)
APPEARS = {"hexagon": 2, "heart": 3, "crescent": 4, "arrow": 5}
FADES = {"bar": 3, "cross": 5}  # absent from this step on
STYLES = [("filled",), ("filled", "painting"), ("painting", "clipart"), ("clipart", "painting", "inverted"),
          ("clipart", "inverted", "sketch"), ("sketch", "inverted", "clipart")]
GROUNDS = [("black", "navy"), ("black", "navy", "gray"), ("gray", "navy"), ("gray", "brown"), ("brown", "gray"),
           ("brown",)]
CAPTIONS = ("a photo of a {colour} {cls}", "a {cls} on {bg}", "a {colour} {cls} in {year}", "a {cls}")
PROMPTS = ("a photo of a {}.", "a {}.", "a picture of a {}.")


def concepts(step: int) -> list[str]:
    """The concepts alive at a time step: the known shapes minus faded ones, plus those that appeared."""
    alive = [c for c in KNOWN_SHAPES if FADES.get(c, len(STEPS)) > step]
    return alive + [c for c, first in APPEARS.items() if first <= step]


def _draw(size: int, step: int, concept: str, rng: np.random.Generator) -> Sample:
    colour, bg = pick(rng, COLORS), pick(rng, GROUNDS[step])
    style = pick(rng, STYLES[step])
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    image = render.render_objects(size, [(concept, colour, cx, cy, rng.uniform(0.17, 0.28))], BACKGROUNDS[bg], rng,
                                  style=style)
    year = int(rng.choice(FIRST_YEARS)) if step == 0 else int(STEPS[step])
    caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(colour=colour, cls=concept, bg=bg, year=year)
    meta = {"timestamp": year, "step": step, "concept": concept, "style": style, "colour": colour}
    return image, caption, -1, meta


def _pool(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    image, caption, _, meta = _draw(size, label, pick(rng, concepts(label)), rng)
    return image, caption, label, meta


def _classify(step: int) -> Maker:
    alive = concepts(step)

    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        image, caption, _, meta = _draw(size, step, alive[label], rng)
        return image, caption, label, meta

    return make


def _retrieve(step: int) -> Maker:
    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        return _draw(size, step, pick(rng, concepts(step)), rng)

    return make


def datasets() -> list[DatasetSpec]:
    """The time-ordered training pool and the per-step dynamic evaluation sets."""
    specs = [DatasetSpec("tic", "tic", "captions", tuple(STEPS), (),
                         "time-ordered captioned pool; stream classes are time steps", _pool,
                         splits=("train",), size_factor=3.0)]
    for step, name in enumerate(STEPS):
        specs.append(DatasetSpec(f"tic_cls_{name}", "tic", "classification", tuple(concepts(step)), PROMPTS,
                                 f"dynamic classification at time step {name}", _classify(step),
                                 splits=("test",), size_factor=0.4))
        specs.append(DatasetSpec(f"tic_ret_{name}", "tic", "retrieval", (), (),
                                 f"dynamic retrieval at time step {name}", _retrieve(step),
                                 splits=("test",), size_factor=0.5))
    return specs
