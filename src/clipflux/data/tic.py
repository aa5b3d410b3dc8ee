"""The TiC-style time-ordered world: six time steps whose concepts drift, appear and fade.

Like TiC-DataComp (whose first step spans 2014-2016, then one step per year), the first step spans
several years and each later step is one year. Over time the rendering style drifts (flat fills, then
paintings and clipart, then sketches and inverted renders), the backgrounds change, new concepts appear
(hexagon, heart, crescent, arrow) and some fade out (bar, cross). Every sample's metadata holds its
`timestamp` (a year) and `step`.

Datasets (role "tic", so FiF's A_KA / A_ZS never count them): `tic`, the training pool, captioned and
streamed by step (`tic+++2017`); `tic_cls`, dynamic classification over every concept that ever lives,
each test image drawn at a step where its concept is alive; `tic_ret`, dynamic image-caption retrieval.
The evaluation splits every score by the samples' `time_step`, which gives TiC's matrix E[i][j].
"""

from __future__ import annotations

import numpy as np

from clipflux.data import render
from clipflux.data.pool import KNOWN_SHAPES, pick
from clipflux.data.render import BACKGROUNDS, COLORS
from clipflux.data.spec import DatasetSpec, Sample

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
    meta = {"timestamp": year, "time_step": step, "concept": concept, "style": style, "colour": colour}
    return image, caption, -1, meta


def _pool(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    image, caption, _, meta = _draw(size, label, pick(rng, concepts(label)), rng)
    return image, caption, label, meta


ALL_CONCEPTS = sorted({c for step in range(len(STEPS)) for c in concepts(step)}, key=lambda c: (c not in KNOWN_SHAPES, c))


def _classify(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    concept = ALL_CONCEPTS[label]
    steps = [t for t in range(len(STEPS)) if concept in concepts(t)]
    image, caption, _, meta = _draw(size, int(steps[rng.integers(len(steps))]), concept, rng)
    return image, caption, label, meta


def _retrieve(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    step = int(rng.integers(len(STEPS)))
    return _draw(size, step, pick(rng, concepts(step)), rng)


def datasets() -> list[DatasetSpec]:
    """The time-ordered training pool and the dynamic evaluation sets."""
    return [
        DatasetSpec("tic", "tic", "captions", tuple(STEPS), (),
                    "time-ordered captioned pool; stream classes are time steps", _pool,
                    splits=("train",), size_factor=3.0),
        DatasetSpec("tic_cls", "tic", "classification", tuple(ALL_CONCEPTS), PROMPTS,
                    "dynamic classification: concepts drawn at the time steps where they live", _classify,
                    splits=("test",), size_factor=1.0),
        DatasetSpec("tic_ret", "tic", "retrieval", (), (),
                    "dynamic image-caption retrieval across time steps", _retrieve,
                    splits=("test",), size_factor=2.0),
    ]
