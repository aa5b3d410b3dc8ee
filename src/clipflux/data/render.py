"""Pure-numpy rendering of the synthetic world's images: shapes, textures and glyphs.

Every function takes an explicit `numpy.random.Generator` (or none at all), so a sample is a pure
function of its seed. Shapes are rasterised at twice the target resolution and box-filtered down,
which gives soft edges at 32 px and identical geometry at 224 px.
"""

from __future__ import annotations

import numpy as np

SUPERSAMPLE = 2

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (105, 105, 105),
    "brown": (95, 65, 35),
    "navy": (20, 25, 75),
}

POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}

SIZES: dict[str, float] = {"small": 0.15, "large": 0.27}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    return np.meshgrid(coords, coords)  # x, y in [0, 1], y grows downwards


def _polygon(dx: np.ndarray, dy: np.ndarray, r: float, sides: int, phase: float) -> np.ndarray:
    """Regular polygon with circumradius r, as the intersection of half-planes."""
    inside = np.ones_like(dx, dtype=bool)
    apothem = r * np.cos(np.pi / sides)
    for k in range(sides):
        angle = phase + (2 * k + 1) * np.pi / sides
        inside &= dx * np.cos(angle) + dy * np.sin(angle) <= apothem
    return inside


def _triangle(dx: np.ndarray, dy: np.ndarray, r: float, up: bool = True) -> np.ndarray:
    return _polygon(dx, dy if up else -dy, r, 3, np.pi / 2 + np.pi / 3)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of `shape` with radius `r` at offsets (dx, dy) from its centre."""
    dist = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    ax, ay = np.abs(dx), np.abs(dy)
    masks = {
        # shapes the pretraining pool shows
        "circle": lambda: dist <= r,
        "square": lambda: np.maximum(ax, ay) <= 0.8 * r,
        "triangle": lambda: _triangle(dx, dy, r),
        "diamond": lambda: ax + ay <= r,
        "cross": lambda: ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r)),
        "ring": lambda: (dist <= r) & (dist >= 0.55 * r),
        "star": lambda: dist <= r * (0.5 + 0.5 * np.cos(5 * (theta + np.pi / 2)) ** 2),
        "bar": lambda: (ax <= r) & (ay <= 0.35 * r),
        # shapes it never shows (new concepts for adaptation)
        "hexagon": lambda: _polygon(dx, dy, r, 6, 0.0),
        "heart": lambda: _heart(dx / r, dy / r),
        "crescent": lambda: (dist <= r) & (np.hypot(dx - 0.45 * r, dy) > 0.8 * r),
        "arrow": lambda: ((ay <= 0.2 * r) & (dx >= -r) & (dx <= 0.2 * r))
        | ((dx >= 0.2 * r) & (dx <= r) & (ay <= 0.65 * (r - dx) / 0.8)),
        "hourglass": lambda: _triangle(dx, dy + 0.45 * r, 0.6 * r, up=False)
        | _triangle(dx, dy - 0.45 * r, 0.6 * r, up=True),
        "semicircle": lambda: (dist <= r) & (dy >= 0),
        "chevron": lambda: (np.abs(dx + ay - 0.5 * r) <= 0.28 * r) & (ay <= r),
        "saltire": lambda: ((np.abs(dx - dy) <= 0.3 * r) | (np.abs(dx + dy) <= 0.3 * r)) & (dist <= 1.1 * r),
        # fine-grained variants of known shapes
        "four-pointed star": lambda: _star(dist, theta, r, 4),
        "five-pointed star": lambda: _star(dist, theta, r, 5),
        "six-pointed star": lambda: _star(dist, theta, r, 6),
        "eight-pointed star": lambda: _star(dist, theta, r, 8),
        "upward triangle": lambda: _triangle(dx, dy, r),
        "downward triangle": lambda: _triangle(dx, dy, r, up=False),
        "leftward triangle": lambda: _triangle(dy, dx, r),
        "rightward triangle": lambda: _triangle(dy, dx, r, up=False),
    }
    if shape not in masks:
        raise KeyError(f"unknown shape {shape!r}; known: {sorted(masks)}")
    return masks[shape]()


def _star(dist: np.ndarray, theta: np.ndarray, r: float, points: int) -> np.ndarray:
    lobe = (1 + np.cos(points * (theta + np.pi / 2))) / 2
    return dist <= r * (0.4 + 0.6 * lobe**3)


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = -(y * 1.1) + 0.2
    x = x * 1.1
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def _downsample(canvas: np.ndarray) -> np.ndarray:
    n = canvas.shape[0] // SUPERSAMPLE
    c = canvas.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE, -1).mean(axis=(1, 3))
    return np.clip(np.rint(c), 0, 255).astype(np.uint8)


STYLES = ("filled", "sketch", "painting", "clipart", "noisy", "lowcontrast", "inverted")


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    """The outline of a mask, `width` (supersampled) pixels thick."""
    inner = mask.copy()
    for _ in range(width):
        inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    return mask & ~inner


def _smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bicubically upsampled (brush-like blotches)."""
    from PIL import Image

    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize(shape[::-1], Image.BICUBIC), dtype=np.float32)


def render_objects(
    size: int,
    objects: list[tuple[str, str, float, float, float]],
    background: tuple[int, int, int],
    rng: np.random.Generator,
    noise: float = 6.0,
    style: str = "filled",
) -> np.ndarray:
    """Render objects onto a plain background in a rendering style.

    Args:
        size: output side length in pixels.
        objects: (shape, colour name, centre x, centre y, radius) in unit coordinates.
        background: RGB of the background (styles with their own background ignore it).
        rng: the sample's generator (jitter and pixel noise).
        noise: standard deviation of the additive pixel noise.
        style: one of `STYLES`: flat fills (the pretraining look), pencil sketches, paintings, clipart with
            outlines, heavy noise, low contrast, or dark objects on a bright ground.

    Returns:
        A (size, size, 3) uint8 image.
    """
    x, y = _grid(size)
    canvas = np.empty(x.shape + (3,), dtype=np.float32)
    ground = {"sketch": (235, 232, 225), "clipart": (250, 250, 250), "inverted": (225, 220, 200)}
    canvas[:] = ground.get(style, background)
    if style == "painting":
        canvas += 45 * _smooth_noise(x.shape, 6, rng)[..., None]
    for shape, colour, cx, cy, r in objects:
        rgb = np.asarray(COLORS[colour], dtype=np.float32) * rng.uniform(0.85, 1.05)
        mask = shape_mask(shape, x - cx, y - cy, r)
        if style == "sketch":
            canvas[_edges(mask, 2)] = rng.uniform(40, 90)
        elif style == "painting":
            canvas[mask] = rgb + 60 * _smooth_noise(x.shape, 10, rng)[mask][:, None]
        elif style == "clipart":
            canvas[mask] = rgb
            canvas[_edges(mask, 3)] = 15
        elif style == "lowcontrast":
            canvas[mask] = 0.78 * canvas[mask] + 0.22 * rgb
        elif style == "inverted":
            canvas[mask] = 0.45 * rgb
        else:
            canvas[mask] = rgb
    sigma = {"noisy": 48.0, "sketch": 4.0}.get(style, noise)
    canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    return _downsample(canvas)


TEXTURES = ["stripes", "checkerboard", "polka dots", "zigzag", "grid", "speckles", "waves", "diagonal stripes"]


def render_texture(size: int, texture: str, fg: tuple[int, int, int], bg: tuple[int, int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Render a two-colour texture filling the whole image, with random scale and phase."""
    x, y = _grid(size)
    period = rng.uniform(0.14, 0.24)
    px, py = rng.uniform(0, 1, size=2)
    u, v = (x + px) / period, (y + py) / period
    patterns = {
        "stripes": lambda: np.floor(u * 2) % 2 == 0,
        "diagonal stripes": lambda: np.floor((u + v) * 1.4) % 2 == 0,
        "checkerboard": lambda: (np.floor(u) + np.floor(v)) % 2 == 0,
        "polka dots": lambda: np.hypot(u % 1 - 0.5, v % 1 - 0.5) < 0.25,
        "grid": lambda: (u % 1 < 0.18) | (v % 1 < 0.18),
        "zigzag": lambda: np.floor(v * 2 + np.abs((u % 1) - 0.5) * 2) % 2 == 0,
        "waves": lambda: np.floor(v * 2 + 0.5 * np.sin(u * 2 * np.pi)) % 2 == 0,
        "speckles": lambda: rng.random(u.shape) < 0.3,
    }
    mask = patterns[texture]()
    canvas = np.empty(x.shape + (3,), dtype=np.float32)
    canvas[:] = bg
    canvas[mask] = fg
    canvas += rng.normal(0.0, 6.0, size=canvas.shape).astype(np.float32)
    return _downsample(canvas)


def render_glyph(size: int, pixels: np.ndarray, fg: tuple[int, int, int], bg: tuple[int, int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """Render an 8x8 grey glyph (scikit-learn's digits, values 0..16) at a random scale and position."""
    fg = np.asarray(fg, dtype=np.float32)
    bg = np.asarray(bg, dtype=np.float32)
    cell = max(1, int(round(size * rng.uniform(0.55, 0.8) / 8)))
    glyph = np.kron(pixels.astype(np.float32) / 16.0, np.ones((cell, cell), dtype=np.float32))
    side = glyph.shape[0]
    ox, oy = rng.integers(0, size - side + 1, size=2)
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[oy : oy + side, ox : ox + side] = glyph
    img = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


SYMBOLS = {"at sign": "@", "hash sign": "#", "dollar sign": "$", "percent sign": "%", "ampersand": "&",
           "question mark": "?", "exclamation mark": "!", "asterisk": "*"}


def render_symbol(size: int, symbol: str, fg: tuple[int, int, int], bg: tuple[int, int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """Render a typographic symbol with Pillow's bundled font, at a random size, place and tilt."""
    from PIL import Image, ImageDraw, ImageFont

    n = size * SUPERSAMPLE
    font = ImageFont.load_default(size=int(n * rng.uniform(0.55, 0.8)))
    layer = Image.new("L", (n, n))
    cx, cy = rng.uniform(0.4, 0.6, size=2) * n
    ImageDraw.Draw(layer).text((cx, cy), symbol, font=font, fill=255, anchor="mm")
    layer = layer.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, center=(cx, cy))
    alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255.0
    canvas = np.asarray(bg, dtype=np.float32) * (1 - alpha) + np.asarray(fg, dtype=np.float32) * alpha
    canvas += rng.normal(0.0, 6.0, size=canvas.shape).astype(np.float32)
    return _downsample(canvas)
