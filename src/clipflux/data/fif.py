"""The FiF-style synthetic benchmark: adaptation datasets with the kinds of shift Fomo-in-Flux streams over,
and evaluation-only datasets that measure zero-shot retention.

Adaptation (streamed; A_KA): concepts the pool never shows (new shapes, textures, digits, symbols), known
concepts in new rendering styles (sketch, painting, clipart, noise, low contrast), fine-grained variants
of known shapes, counting, spatial relations, and a retrieval set whose text is a full caption.
Evaluation-only (A_ZS): held-out renders of what the pool's captions teach (shapes, colours, positions,
backgrounds, several of one shape) and a caption retrieval set drawn like the pool; the base model scores each
at least twice chance (README: The embedded default), so A_ZS measures what is kept, not what is learned. The
ImageNet-A / -R stand-ins (clutter, inverted rendering) are shifts the base model does not handle (near chance):
they are adaptation datasets.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clipflux.data import render
from clipflux.data.pool import KNOWN_SHAPES, pick, plural, pool_sample, position_phrase
from clipflux.data.render import BACKGROUNDS, COLORS, POSITIONS
from clipflux.data.spec import DatasetSpec, Maker, Sample

NOVEL_SHAPES = ["hexagon", "heart", "crescent", "arrow", "hourglass", "semicircle", "chevron", "saltire"]
FINE_GRAINED = ["four-pointed star", "five-pointed star", "six-pointed star", "eight-pointed star",
                "upward triangle", "downward triangle", "leftward triangle", "rightward triangle"]
DIGIT_NAMES = [str(d) for d in range(10)]  # numerals: the pool counts in words ("two"), never in digits
COUNTS = ["one", "two", "three", "four", "five", "six"]
RELATIONS = ["left of", "right of", "above", "below"]
PLACES = [position_phrase(p) for p in POSITIONS]  # the pool's own phrasing, in POSITIONS order
OBJECT_PROMPTS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")
# Training captions name the class and only sometimes what else the image shows: with colour and background
# in every caption, a batch is matched by those words alone and the class names are never learned.
OBJECT_CAPTIONS = (
    "a photo of a {cls}",
    "a {cls}",
    "a picture of a {cls}",
    "a {size} {cls}",
    "a {cls} {where}",
    "a {colour} {cls}",
)


def _caption(templates: tuple[str, ...], rng: np.random.Generator, **words: str) -> str:
    """A training caption: a random template filled with the class name (`cls`) and what the image shows."""
    return templates[rng.integers(len(templates))].format(**words)


def single_object(size: int, shape: str, colour: str, rng: np.random.Generator, style: str = "filled",
                  extra: list | None = None, bg: str | None = None) -> tuple[np.ndarray, dict]:
    """One object at a random place and size (plus optional extra objects) on `bg` (None: a random
    background); the image and its words."""
    bg = bg or pick(rng, BACKGROUNDS)
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    radius = rng.uniform(0.17, 0.28)
    objects = [(shape, colour, cx, cy, radius)] + (extra or [])
    image = render.render_objects(size, objects, BACKGROUNDS[bg], rng, style=style)
    offsets = {"left": 0.5 - cx, "right": cx - 0.5, "top": 0.5 - cy, "bottom": cy - 0.5}
    side = max(offsets, key=offsets.get)
    where = position_phrase(side if offsets[side] > 0.08 else "center")
    return image, {"colour": colour, "bg": bg, "size": "large" if radius > 0.225 else "small", "where": where}


# --------------------------------------------------------------------------------------------------
# Makers: (size, label, split, rng) -> (image, caption, label, meta)


def shape_maker(shapes: list[str], captions: tuple[str, ...], style: str = "filled") -> Maker:
    """Single objects of the given shapes (the label indexes `shapes`) in a rendering style."""

    def make(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
        image, words = single_object(size, shapes[label], pick(rng, COLORS), rng, style)
        return image, _caption(captions, rng, cls=shapes[label], **words), label, dict(words, style=style)

    return make


def _colour(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    colour, shape = list(COLORS)[label], pick(rng, KNOWN_SHAPES)
    image, words = single_object(size, shape, colour, rng)
    return image, _caption(("a {cls} {shape}", "a {cls} object {where}"), rng, cls=colour, shape=shape, **words), \
        label, dict(words, shape=shape)


def _position(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    place = list(POSITIONS)[label]
    shape, colour, bg = pick(rng, KNOWN_SHAPES), pick(rng, COLORS), pick(rng, BACKGROUNDS)
    cx, cy = np.asarray(POSITIONS[place]) + rng.uniform(-0.04, 0.04, size=2)
    image = render.render_objects(size, [(shape, colour, cx, cy, rng.uniform(0.14, 0.2))], BACKGROUNDS[bg], rng)
    return image, f"a {colour} {shape} {PLACES[label]}", label, {"shape": shape, "colour": colour}


def _background(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """A known shape on one of the pool's backgrounds (the class), named as the pool's captions name it."""
    bg, shape = list(BACKGROUNDS)[label], pick(rng, KNOWN_SHAPES)
    image, words = single_object(size, shape, pick(rng, COLORS), rng, bg=bg)
    return image, f"a {words['colour']} {shape} on a {bg} background", label, dict(words, shape=shape)


def _multiple(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """Two or three of one known shape (the class, a plural) in the pool's multi-object layout (one per quadrant)."""
    shape, colour, bg = KNOWN_SHAPES[label], pick(rng, COLORS), pick(rng, BACKGROUNDS)
    count = int(rng.integers(2, 4))
    objects = [(shape, colour, 0.27 + 0.46 * (c % 2) + rng.uniform(-0.03, 0.03), 0.27 + 0.46 * (c // 2), 0.13)
               for c in rng.permutation(4)[:count]]
    image = render.render_objects(size, objects, BACKGROUNDS[bg], rng)
    return image, f"{COUNTS[count - 1]} {colour} {plural(shape)}", label, {"colour": colour, "bg": bg, "count": count}


def _clutter(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """A known shape among small distractors: hard examples in the way ImageNet-A is hard."""
    dots = [("circle", pick(rng, COLORS), *rng.uniform(0.05, 0.95, size=2), rng.uniform(0.03, 0.06))
            for _ in range(int(rng.integers(6, 12)))]
    image, words = single_object(size, KNOWN_SHAPES[label], pick(rng, COLORS), rng, extra=dots)
    captions = ("a {cls} among dots", "a photo of a {cls} among dots", "a {colour} {cls} among dots", "a {cls}")
    return image, _caption(captions, rng, cls=KNOWN_SHAPES[label], **words), label, words


def _counting(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    count = label + 1
    shape, colour, bg = pick(rng, KNOWN_SHAPES), pick(rng, COLORS), pick(rng, BACKGROUNDS)
    cells = rng.permutation(9)[:count]  # a 3x3 grid, so objects never overlap
    objects = [(shape, colour, 0.2 + 0.3 * (c % 3) + rng.uniform(-0.03, 0.03), 0.2 + 0.3 * (c // 3), 0.1)
               for c in cells]
    image = render.render_objects(size, objects, BACKGROUNDS[bg], rng)
    word = COUNTS[label]
    caption = _caption(("{cls} {shapes}", "a photo of {cls} {shapes}", "{cls} objects", "{cls} {colour} {shapes}"), rng,
                       cls=word, colour=colour, shapes=shape if count == 1 else plural(shape), bg=bg)
    return image, caption, label, {"shape": shape, "colour": colour, "count": count}


def _spatial(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """A red and a blue object in one of four relations (like CLEVR's spatial questions)."""
    first, second, bg = pick(rng, KNOWN_SHAPES), pick(rng, KNOWN_SHAPES), pick(rng, ("black", "gray", "navy"))
    dx, dy = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}[RELATIONS[label]]
    gap = rng.uniform(0.22, 0.3)
    cx, cy = 0.5 + rng.uniform(-0.08, 0.08, size=2)
    objects = [(first, "red", cx + dx * gap, cy + dy * gap, 0.14), (second, "blue", cx - dx * gap, cy - dy * gap, 0.14)]
    image = render.render_objects(size, objects, BACKGROUNDS[bg], rng)
    caption = _caption(("a red {a} {cls} a blue {b}", "the red object is {cls} the blue object"), rng,
                       a=first, b=second, cls=RELATIONS[label])
    return image, caption, label, {"first": first, "second": second}


def _texture(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    texture = render.TEXTURES[label]
    fg = pick(rng, COLORS)
    bg = pick(rng, COLORS, exclude=fg)
    image = render.render_texture(size, texture, COLORS[fg], COLORS[bg], rng)
    captions = ("a photo of a {cls} pattern", "a {cls} texture", "{cls}", "a {cls} pattern in {fg}")
    return image, _caption(captions, rng, cls=texture, fg=fg, bg=bg), label, {"fg": fg, "bg": bg}


@lru_cache(maxsize=1)
def _digits_by_class() -> list[np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    digits = load_digits()
    return [digits.images[digits.target == c] for c in range(10)]


def _digit(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    pool = _digits_by_class()[label]
    # Train and test draw from disjoint halves of scikit-learn's digits, so no test glyph leaks.
    half = len(pool) // 2
    lo, hi = (0, half) if split == "train" else (half, len(pool))
    glyph = int(rng.integers(lo, hi))
    fg, bg = pick(rng, COLORS), pick(rng, BACKGROUNDS)
    image = render.render_glyph(size, pool[glyph], COLORS[fg], BACKGROUNDS[bg], rng)
    captions = ("a handwritten {cls}", "the digit {cls}", "a photo of the number {cls}", "a {fg} {cls}")
    return image, _caption(captions, rng, cls=DIGIT_NAMES[label], fg=fg, bg=bg), label, {"fg": fg, "glyph": glyph}


def _symbol(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    name = list(render.SYMBOLS)[label]
    fg, bg = pick(rng, COLORS), pick(rng, BACKGROUNDS)
    image = render.render_symbol(size, render.SYMBOLS[name], COLORS[fg], BACKGROUNDS[bg], rng)
    captions = ("a {cls}", "the symbol {cls}", "a photo of a {cls} sign", "a {cls} in {fg}")
    return image, _caption(captions, rng, cls=name, fg=fg, bg=bg), label, {"fg": fg, "bg": bg}


def _scene(size: int, label: int, split: str, rng: np.random.Generator) -> Sample:
    """Two new shapes side by side, described by a full caption (retrieval; streamed by the left shape)."""
    left, right = NOVEL_SHAPES[label], pick(rng, NOVEL_SHAPES, exclude=NOVEL_SHAPES[label])
    c1, c2, bg = pick(rng, COLORS), pick(rng, COLORS), pick(rng, BACKGROUNDS)
    objects = [(left, c1, 0.27, 0.5 + rng.uniform(-0.1, 0.1), 0.17), (right, c2, 0.73, 0.5 + rng.uniform(-0.1, 0.1), 0.17)]
    image = render.render_objects(size, objects, BACKGROUNDS[bg], rng)
    caption = _caption(("a {c1} {a} on the left and a {c2} {b} on the right",
                        "a {c2} {b} to the right of a {c1} {a} on {bg}"), rng, a=left, b=right, c1=c1, c2=c2, bg=bg)
    return image, caption, label, {"left": left, "right": right}


# --------------------------------------------------------------------------------------------------


def _styled(name: str, style: str, noun: str, shift: str) -> DatasetSpec:
    prompts = (f"a {noun} of a {{}}.", f"a {noun} of the {{}}.", f"a {{}} in a {noun}.")
    captions = (f"a {noun} of a {{cls}}", f"a {{cls}} in a {noun}", f"a {{cls}}, a {noun}", f"a {noun} of a {{colour}} {{cls}}")
    return DatasetSpec(name, "adaptation", "classification", tuple(KNOWN_SHAPES), prompts, shift,
                       shape_maker(KNOWN_SHAPES, captions, style))


def datasets() -> list[DatasetSpec]:
    """The pool, the adaptation datasets and the evaluation-only datasets of the FiF-style world."""
    new = "concepts the pretraining pool never shows"
    return [
        DatasetSpec("pool", "pretraining", "captions", (), (),
                    "captioned shapes: objects, colours, sizes, positions, backgrounds, counts", pool_sample),
        # evaluation-only: zero-shot retention
        DatasetSpec("shapes", "evaluation", "classification", tuple(KNOWN_SHAPES), OBJECT_PROMPTS,
                    "held-out renders of pretraining concepts (the ImageNet of this world)",
                    shape_maker(KNOWN_SHAPES, OBJECT_CAPTIONS)),
        DatasetSpec("colours", "evaluation", "classification", tuple(COLORS),
                    ("a photo of something {}.", "a {} object.", "a {} shape."),
                    "colour recognition on pretraining shapes", _colour),
        DatasetSpec("positions", "evaluation", "classification", tuple(PLACES),
                    ("a shape {}.", "an object {}.", "something {}."),
                    "where an object is, as the pool's captions say it", _position),
        DatasetSpec("backgrounds", "evaluation", "classification", tuple(BACKGROUNDS),
                    ("a shape on a {} background.", "an object on a {} background.", "a photo of something on {}."),
                    "which background an object is on, as the pool's captions say it", _background),
        DatasetSpec("shapes_multiple", "evaluation", "classification", tuple(plural(s) for s in KNOWN_SHAPES),
                    ("two {}", "three {}", "a photo of two {}", "a photo of three {}"),
                    "two or three of one pretraining shape, named as the pool's multi-object captions name them",
                    _multiple),
        DatasetSpec("pool_captions", "evaluation", "retrieval", (), (),
                    "caption retrieval on held-out pool-like images (like MSCOCO / Flickr30k)", pool_sample,
                    size_factor=0.5),
        # adaptation: the stream
        DatasetSpec("novel_shapes", "adaptation", "classification", tuple(NOVEL_SHAPES), OBJECT_PROMPTS, new,
                    shape_maker(NOVEL_SHAPES, OBJECT_CAPTIONS)),
        DatasetSpec("textures", "adaptation", "classification", tuple(render.TEXTURES),
                    ("a photo of a {} pattern.", "a {} texture.", "{}."),
                    "textures (like DTD): full-image patterns never seen in pretraining", _texture),
        DatasetSpec("digits", "adaptation", "classification", tuple(DIGIT_NAMES),
                    ("a photo of the number {}.", "the digit {}.", "a handwritten {}."),
                    "scikit-learn's handwritten digits (like MNIST): glyphs never seen in pretraining", _digit),
        DatasetSpec("symbols", "adaptation", "classification", tuple(render.SYMBOLS),
                    ("a photo of a {}.", "the symbol {}.", "a {} sign."),
                    "typographic symbols (glyphs never seen in pretraining)", _symbol),
        # shifts the base model does not handle (it scores them at chance or near it), so they are learned,
        # not retained: ImageNet-A / -R stand-ins stream with the other renditions
        DatasetSpec("shapes_clutter", "adaptation", "classification", tuple(KNOWN_SHAPES), OBJECT_PROMPTS,
                    "known shapes among distractors (hard examples, like ImageNet-A)", _clutter),
        DatasetSpec("shapes_inverted", "adaptation", "classification", tuple(KNOWN_SHAPES), OBJECT_PROMPTS,
                    "known shapes dark on a bright ground (a rendition shift, like ImageNet-R)",
                    shape_maker(KNOWN_SHAPES, OBJECT_CAPTIONS, "inverted")),
        _styled("sketch_shapes", "sketch", "sketch", "known concepts as pencil sketches (like DomainNet-Sketch)"),
        _styled("painted_shapes", "painting", "painting", "known concepts as paintings (like DomainNet-Painting)"),
        _styled("clipart_shapes", "clipart", "clipart", "known concepts as outlined clipart (like DomainNet-Clipart)"),
        _styled("noisy_shapes", "noisy", "noisy photo", "known concepts under heavy sensor noise"),
        _styled("faint_shapes", "lowcontrast", "faint photo", "known concepts at low contrast"),
        DatasetSpec("fine_grained", "adaptation", "classification", tuple(FINE_GRAINED), OBJECT_PROMPTS,
                    "fine-grained variants of known shapes (star points, triangle directions; like FGVC)",
                    shape_maker(FINE_GRAINED, OBJECT_CAPTIONS)),
        DatasetSpec("counting", "adaptation", "classification", tuple(COUNTS),
                    ("a photo of {} objects.", "{} shapes.", "there are {} things."),
                    "counting one to six objects (like CLEVR counts; the pool only counts to three)", _counting),
        DatasetSpec("spatial", "adaptation", "classification", tuple(RELATIONS),
                    ("a red shape {} a blue shape.", "the red object is {} the blue object."),
                    "spatial relations between two objects (like CLEVR relations)", _spatial),
        DatasetSpec("novel_scenes", "adaptation", "retrieval", tuple(NOVEL_SHAPES), (),
                    "retrieval with full captions of scenes of new shapes (like an adaptation MSCOCO)", _scene),
    ]
