"""Deterministic renderer of the toy world: 32x32 RGB images of one object from the grammar.

    >>> r = render({"shape": "triangle", "colour": "red"}, seed=0)
    >>> r.image.shape, r.mask.shape, r.labels["style"]
    ((32, 32, 3), (32, 32), ...)

Attributes that are not given are drawn from the seed. Position and size are random (the object's
half-size is 7 to 12 pixels and it always lies wholly inside the image). Shapes are drawn at 4x
resolution and box-filtered down, so edges are antialiased; the mask is the object's silhouette at
32x32 (a pixel belongs to it when at least half of it is covered).

Fill styles: `solid` is the colour; `striped` alternates horizontal bands of the colour and of its
tint (colour mixed with white), 4 pixels each; `dotted` is the tint with round dots of the colour on
a 6-pixel grid. Periods are chosen so that the 4x-downsampling VAE can still represent them.
"""

from dataclasses import dataclass

import numpy as np

from .grammar import ATTRIBUTES, BACKGROUND_RGB, NONE, RGB, SHAPES


SIZE = 32
SUPER = 4  # supersampling factor
TINT = 0.6  # how much white the tint of a colour holds
STRIPE_PERIOD = 8
DOT_PERIOD = 6
DOT_RADIUS = 1.7


@dataclass
class Render:
    image: np.ndarray  # (32, 32, 3) uint8
    labels: dict  # shape, colour, style, background ("none" for shape/colour/style when empty)
    mask: np.ndarray  # (32, 32) bool, the object's silhouette


def _star_polygon(points=5, inner=0.45):
    angles = np.arange(2 * points) * np.pi / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles) + 0.08], axis=1)


_TRIANGLE = np.array([[0.0, -1.0], [-1.0, 0.78], [1.0, 0.78]])
_STAR = _star_polygon()


def _inside_polygon(x, y, poly):
    """Even-odd rule; x, y arrays of points, poly (N, 2)."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        x_at = (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (x < x_at)
    return inside


def silhouette(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the object's half-size around its centre, lie in `shape`."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "triangle":
        return _inside_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(u, v, _STAR * 1.08)
    if shape == "cross":
        return ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def sample_labels(rng: np.random.Generator, labels: dict | None = None) -> dict:
    """Complete `labels` with random values for the attributes it does not give."""
    labels = dict(labels or {})
    for attribute, values in ATTRIBUTES.items():
        if labels.get(attribute) is None:
            labels[attribute] = values[rng.integers(len(values))]
        elif labels[attribute] not in values and not (attribute != "background" and labels[attribute] == NONE):
            raise ValueError(f"unknown {attribute} {labels[attribute]!r}; known: {', '.join(values)}")
    if labels["shape"] == NONE:
        labels["colour"] = labels["style"] = NONE
    return labels


def render(labels: dict | None = None, seed: int | None = None, rng: np.random.Generator | None = None) -> Render:
    """Draw one image. Same labels and seed give the same pixels. `shape="none"` draws an empty background."""
    if rng is None:
        rng = np.random.default_rng(seed)
    labels = sample_labels(rng, labels)
    background = np.array(BACKGROUND_RGB[labels["background"]], dtype=np.float32) + rng.uniform(-6, 6, 3)
    image = np.broadcast_to(background, (SIZE, SIZE, 3)).copy()
    if labels["shape"] == NONE:
        return Render(np.clip(image, 0, 255).round().astype(np.uint8), labels, np.zeros((SIZE, SIZE), bool))

    half = rng.uniform(7.0, 12.0)  # half-size in pixels
    cx, cy = rng.uniform(half + 0.5, SIZE - half - 0.5, size=2)
    colour = np.clip(np.array(RGB[labels["colour"]], dtype=np.float32) + rng.uniform(-10, 10, 3), 0, 255)
    tint = colour * (1 - TINT) + 255 * TINT
    phase = rng.uniform(0, 1, size=2)

    # sample points at the centres of the supersampled pixels, in image pixel units
    s = (np.arange(SIZE * SUPER) + 0.5) / SUPER
    py, px = np.meshgrid(s, s, indexing="ij")  # (128, 128)
    cover = silhouette(labels["shape"], (px - cx) / half, (py - cy) / half)

    style = labels["style"]
    if style == "solid":
        full = np.ones_like(cover)
    elif style == "striped":
        full = ((py / STRIPE_PERIOD + phase[0]) % 1.0) < 0.5
    elif style == "dotted":
        gx = (px / DOT_PERIOD + phase[0]) % 1.0 - 0.5
        gy = (py / DOT_PERIOD + phase[1]) % 1.0 - 0.5
        full = (gx**2 + gy**2) * DOT_PERIOD**2 <= DOT_RADIUS**2
    else:
        raise ValueError(f"unknown style {style!r}")

    fill = np.where(full[..., None], colour, tint)  # (128, 128, 3)
    hi = np.where(cover[..., None], fill, background)
    image = hi.reshape(SIZE, SUPER, SIZE, SUPER, 3).mean(axis=(1, 3))
    mask = cover.reshape(SIZE, SUPER, SIZE, SUPER).mean(axis=(1, 3)) >= 0.5
    return Render(np.clip(image, 0, 255).round().astype(np.uint8), labels, mask)
