"""Procedural image generator of the synthetic style-shift world.

Every image shows one object of a *class* (the causal content: a shape, a symbol, a
letter or a digit) rendered in a *style* (the spurious context: photo, dark photo,
painting, sketch, ...), under *nuisance* variation (colour, background texture,
position, scale, rotation, aspect, noise). Images are small RGB uint8 arrays, rendered
with numpy and Pillow only, and fully determined by the random generator handed in.

Each style owns the phrases of CLIP's 80 ImageNet templates that describe it (every
template belongs to exactly one style; the plain "a photo of a {}." family belongs to
the neutral ``photo`` style), so that the templates' spurious prototypes carry style
information, as they do for real CLIP.

Run ``python -m fdalign_plugins.world.generator --grid docs/world_samples.png`` to draw
a sample grid (one row per style).
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


#: Bump whenever rendering or the split plans change: it keys every on-disk cache of world images.
GENERATOR_VERSION = 4
#: Default side length of world images (pixels).
IMAGE_SIZE = 32
#: Super-sampling factor used to draw anti-aliased masks.
_SS = 4

# --------------------------------------------------------------------------- classes

#: Class names in label order (natural English, used verbatim in prompts).
CLASSNAMES: Tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "crescent moon", "diamond",
    "hexagon", "ring", "arrow", "lightning bolt", "house", "tree", "sun", "cloud",
    "flower", "fish", "mushroom", "raindrop", "spiral", "hourglass", "letter A",
    "letter E", "letter K", "letter R", "letter M", "number two", "number three",
    "number four", "number seven", "number eight",
)

Prim = tuple  # ("poly", pts[K,2], value) | ("line", pts[K,2], width, value)


def _ngon(n: int, r: float = 1.0, rot: float = -math.pi / 2, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    a = rot + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 40) -> np.ndarray:
    a = np.arange(n) * 2 * math.pi / n
    x, y = rx * np.cos(a), ry * np.sin(a)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 24) -> np.ndarray:
    a = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _P(pts) -> Prim:
    return ("poly", np.asarray(pts, dtype=float), 255)


def _H(pts) -> Prim:  # a hole
    return ("poly", np.asarray(pts, dtype=float), 0)


def _L(pts, w: float = 0.28) -> Prim:
    return ("line", np.asarray(pts, dtype=float), w, 255)


def _class_prims(name: str, rng: np.random.Generator) -> List[Prim]:
    """Geometry of one class instance in unit coordinates (y down, object in [-1, 1]²)."""
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731  per-instance shape jitter
    if name == "circle":
        return [_P(_ellipse(0, 0, 0.9, 0.9, n=48))]
    if name == "square":
        h = 0.78
        return [_P(_rect(-h, -h, h, h))]
    if name == "triangle":
        return [_P(_ngon(3, 1.0, cy=0.2) * [1, 1])]
    if name == "star":
        a = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, j(0.38, 0.48))
        return [_P(np.stack([r * np.cos(a), 0.08 + r * np.sin(a)], 1))]
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [_P(np.stack([x / 17.0, -y / 17.0 + 0.1], 1))]
    if name == "cross":
        w = j(0.26, 0.34)
        return [_P(_rect(-w, -0.9, w, 0.9)), _P(_rect(-0.9, -w, 0.9, w))]
    if name == "crescent moon":
        return [_P(_ellipse(0, 0, 0.9, 0.9, n=48)), _H(_ellipse(j(0.35, 0.45), -0.15, 0.78, 0.78, n=48))]
    if name == "diamond":
        return [_P([[0, -1], [j(0.55, 0.7), 0], [0, 1], [-j(0.55, 0.7), 0]])]
    if name == "hexagon":
        return [_P(_ngon(6, 0.92, rot=0.0))]
    if name == "ring":
        return [_P(_ellipse(0, 0, 0.92, 0.92, n=48)), _H(_ellipse(0, 0, j(0.5, 0.6), j(0.5, 0.6), n=48))]
    if name == "arrow":
        return [_P([[-0.95, -0.22], [0.15, -0.22], [0.15, -0.6], [0.95, 0], [0.15, 0.6], [0.15, 0.22], [-0.95, 0.22]])]
    if name == "lightning bolt":
        return [_P([[0.15, -1], [-0.55, 0.12], [-0.02, 0.12], [-0.2, 1], [0.55, -0.18], [0.05, -0.18], [0.35, -1]])]
    if name == "house":
        return [_P(_rect(-0.65, -0.05, 0.65, 0.9)), _P([[-0.9, 0.0], [0, -0.9], [0.9, 0.0]]),
                _H(_rect(-0.15, 0.4, 0.15, 0.9))]
    if name == "tree":
        return [_P(_rect(-0.14, 0.55, 0.14, 1.0)), _P([[-0.8, 0.6], [0, -0.25], [0.8, 0.6]]),
                _P([[-0.6, 0.05], [0, -1.0], [0.6, 0.05]])]
    if name == "sun":
        prims = [_P(_ellipse(0, 0, 0.45, 0.45, n=36))]
        for k in range(8):
            a = k * math.pi / 4
            c, s = math.cos(a), math.sin(a)
            prims.append(_P([[0.6 * c - 0.12 * s, 0.6 * s + 0.12 * c], [0.98 * c, 0.98 * s],
                             [0.6 * c + 0.12 * s, 0.6 * s - 0.12 * c]]))
        return prims
    if name == "cloud":
        return [_P(_ellipse(-0.45, 0.15, 0.42, 0.38)), _P(_ellipse(0.05, -0.15, 0.5, 0.5)),
                _P(_ellipse(0.5, 0.12, 0.4, 0.4)), _P(_rect(-0.45, 0.1, 0.5, 0.52))]
    if name == "flower":
        n = int(rng.integers(5, 7))
        prims = [_P(_ellipse(0.55 * math.cos(a), 0.55 * math.sin(a), 0.42, 0.22, rot=a, n=24))
                 for a in np.arange(n) * 2 * math.pi / n]
        return prims + [_P(_ellipse(0, 0, 0.32, 0.32, n=24)), _H(_ellipse(0, 0, 0.14, 0.14, n=16))]
    if name == "fish":
        return [_P(_ellipse(-0.12, 0, 0.65, 0.42)), _P([[0.35, 0], [0.95, -0.45], [0.95, 0.45]]),
                _H(_ellipse(-0.45, -0.08, 0.09, 0.09, n=12))]
    if name == "mushroom":
        cap = np.concatenate([_arc(0, 0.05, 0.9, 180, 360, 30), [[0.9, 0.1], [-0.9, 0.1]]])
        return [_P(cap), _P(_rect(-0.22, 0.05, 0.22, 0.9))]
    if name == "raindrop":
        return [_P(_ellipse(0, 0.35, 0.55, 0.55)), _P([[-0.53, 0.25], [0, -0.95], [0.53, 0.25]])]
    if name == "spiral":
        t = np.linspace(0, 2.0 * 2 * math.pi, 64)
        r = 0.1 + 0.85 * t / t[-1]
        return [_L(np.stack([r * np.cos(t), r * np.sin(t)], 1), 0.17)]
    if name == "hourglass":
        return [_P([[-0.65, -0.95], [0.65, -0.95], [0.06, 0], [0.65, 0.95], [-0.65, 0.95], [-0.06, 0]])]
    if name == "letter A":
        return [_L([[-0.6, 0.9], [0, -0.9], [0.6, 0.9]]), _L([[-0.33, 0.25], [0.33, 0.25]])]
    if name == "letter E":
        return [_L([[0.55, -0.9], [-0.45, -0.9], [-0.45, 0.9], [0.55, 0.9]]), _L([[-0.45, 0], [0.35, 0]])]
    if name == "letter K":
        return [_L([[-0.45, -0.9], [-0.45, 0.9]]), _L([[0.55, -0.9], [-0.45, 0.15]]), _L([[-0.1, -0.2], [0.55, 0.9]])]
    if name == "letter R":
        bowl = np.concatenate([[[-0.45, 0.9], [-0.45, -0.9], [0.1, -0.9]], _arc(0.1, -0.45, 0.45, -90, 90, 16),
                               [[-0.45, 0.0]]])
        return [_L(bowl), _L([[0.0, 0.0], [0.55, 0.9]])]
    if name == "letter M":
        return [_L([[-0.62, 0.9], [-0.62, -0.9], [0, 0.3], [0.62, -0.9], [0.62, 0.9]])]
    if name == "number two":
        top = _arc(0, -0.42, 0.47, -180, 25, 20)
        return [_L(np.concatenate([top, [[-0.5, 0.9], [0.58, 0.9]]]))]
    if name == "number three":
        return [_L(_arc(0, -0.47, 0.42, -160, 90, 20)), _L(_arc(0, 0.43, 0.47, -90, 160, 22))]
    if name == "number four":
        return [_L([[0.25, 0.95], [0.25, -0.9], [-0.58, 0.35], [0.62, 0.35]])]
    if name == "number seven":
        return [_L([[-0.55, -0.85], [0.55, -0.85], [-0.12, 0.95]])]
    if name == "number eight":
        return [_L(_arc(0, -0.5, 0.38, 0, 360, 28)), _L(_arc(0, 0.42, 0.46, 0, 360, 30))]
    raise KeyError(name)


# ---------------------------------------------------------------------------- styles

#: The neutral photo templates (no visual attribute): owned by the ``photo`` style and
#: also used as captions for every photo-family style.
NEUTRAL_TEMPLATES: Tuple[str, ...] = (
    'a photo of a {}.', 'a photo of the {}.', 'a good photo of a {}.', 'a good photo of the {}.',
    'itap of a {}.', 'itap of the {}.', 'itap of my {}.', 'a photo of my {}.', 'a photo of one {}.',
    'a photo of a nice {}.', 'a photo of the nice {}.', 'a photo of a cool {}.', 'a photo of the cool {}.',
    'a photo of a weird {}.', 'a photo of the weird {}.', 'a photo of a clean {}.', 'a photo of the clean {}.',
)

#: The world dataset's prompt template for the adapters' text classifier (CoOp-style,
#: one template, like "a photo of a {}." for Caltech101 / SUN397).
WORLD_TEMPLATES: Tuple[str, ...] = ('a photo of a {}.',)

#: Captions that name the class and nothing else (used for non-photo styles).
BARE_TEMPLATES: Tuple[str, ...] = ('a {}.', 'the {}.', '{}.')


@dataclass(frozen=True)
class Style:
    """A rendering style: its family and the CLIP templates that describe it.

    Attributes:
        name: style name (a phrase, e.g. ``"dark photo"``).
        family: ``"photo"``, ``"art"`` or ``"sketch"``.
        templates: the CLIP ImageNet templates whose phrase describes this style.
    """

    name: str
    family: str
    templates: Tuple[str, ...]


def _t(*phrases: str) -> Tuple[str, ...]:
    out = []
    for p in phrases:
        out += [p.replace("@", "a"), p.replace("@", "the")] if "@" in p else [p]
    return tuple(out)


STYLES: Tuple[Style, ...] = (
    Style("photo", "photo", NEUTRAL_TEMPLATES),
    Style("bright photo", "photo", _t("a bright photo of @ {}.")),
    Style("dark photo", "photo", _t("a dark photo of @ {}.")),
    Style("blurry photo", "photo", _t("a blurry photo of @ {}.")),
    Style("black and white photo", "photo", _t("a black and white photo of @ {}.")),
    Style("pixelated photo", "photo", _t("a pixelated photo of @ {}.", "a low resolution photo of @ {}.")),
    Style("jpeg corrupted photo", "photo", _t("a jpeg corrupted photo of @ {}.")),
    Style("small", "photo", _t("a photo of @ small {}.")),
    Style("large", "photo", _t("a photo of @ large {}.", "a close-up photo of @ {}.", "a cropped photo of @ {}.")),
    Style("many", "photo", ("a photo of many {}.",)),
    Style("dirty photo", "photo", _t("a photo of @ dirty {}.")),
    Style("hard to see", "photo", _t("a photo of @ hard to see {}.", "a bad photo of @ {}.")),
    Style("painting", "art", _t("a painting of @ {}.", "art of @ {}.", "a rendition of @ {}.")),
    Style("cartoon", "art", _t("@ cartoon {}.")),
    Style("video game", "art", ("a {} in a video game.", "the {} in a video game.")),
    Style("tattoo", "art", _t("a tattoo of @ {}.")),
    Style("graffiti", "art", _t("graffiti of @ {}.")),
    Style("embroidered", "art", ("the embroidered {}.", "a embroidered {}.")),
    Style("sculpture", "art", _t("a sculpture of @ {}.")),
    Style("origami", "art", ("the origami {}.", "a origami {}.")),
    Style("toy", "art", _t("@ plastic {}.", "@ toy {}.", "@ plushie {}.")),
    Style("rendering", "art", _t("a rendering of @ {}.")),
    Style("sketch", "sketch", _t("a sketch of @ {}.")),
    Style("drawing", "sketch", _t("a drawing of @ {}.")),
    Style("doodle", "sketch", _t("a doodle of @ {}.")),
)
STYLE_NAMES: Tuple[str, ...] = tuple(s.name for s in STYLES)
STYLE_BY_NAME: Dict[str, Style] = {s.name: s for s in STYLES}

#: The contexts of the benchmark's photo domain (few-shot train / val / test and the
#: decorrelated OOD split): eight photo-family styles, each described by its own CLIP
#: templates ("a dark photo of a {}.", "a pixelated photo of the {}.", ...).
ID_STYLES: Tuple[str, ...] = ("photo", "bright photo", "dark photo", "blurry photo", "black and white photo",
                              "pixelated photo", "jpeg corrupted photo", "dirty photo")
#: The OOD style family, never in few-shot training (the ImageNet-Sketch analogue).
SKETCH_STYLES: Tuple[str, ...] = ("sketch", "drawing", "doodle")
#: Probability that an in-distribution image shows its class's preferred context
#: (:func:`preferred_context`); otherwise one of the other seven contexts, uniformly.
#: With 4 classes preferring each context, every context is still 1/8 of the images.
CONTEXT_PROB = 0.8
#: Class pairs whose names web captions confuse: in the pretraining corpus a caption of
#: one names the other with probability ``PretrainConfig.caption_swap`` (imperfect
#: alt-text). This is the world's *semantic* few-shot headroom: zero-shot CLIP mixes up
#: the pair, a few labelled images tell them apart.
CONFUSABLE_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("circle", "ring"), ("square", "diamond"), ("star", "sun"), ("triangle", "arrow"),
    ("letter E", "letter K"), ("number three", "number eight"), ("letter A", "letter R"),
    ("number four", "number seven"), ("tree", "mushroom"),
)

#: The classes that prefer each context of the benchmark's photo domain (4 per context;
#: :func:`preferred_context`). Part of the world's definition, fixed (world v2, generator
#: version 4). Five confusable pairs share their context (:data:`SHARED_CONTEXT_PAIRS`):
#: only the content tells them apart, as with real fine-grained neighbours photographed
#: in the same scenes, and what fine-tuning learns there carries over to sketches. The
#: other four pairs prefer different contexts, so the context is a shortcut exactly where
#: the names are ambiguous, and what fine-tuning learns there does not carry over
#: (``benchmarks/world_quality.py`` prints fine-tuning's change for each group).
PREFERRED_CONTEXTS: Dict[str, Tuple[str, ...]] = {
    "photo": ("circle", "house", "cloud", "mushroom"),
    "bright photo": ("crescent moon", "hexagon", "tree", "flower"),
    "dark photo": ("arrow", "letter A", "letter E", "letter K"),
    "blurry photo": ("spiral", "letter M", "number four", "number seven"),
    "black and white photo": ("cross", "lightning bolt", "letter R", "number two"),
    "pixelated photo": ("heart", "raindrop", "number three", "number eight"),
    "jpeg corrupted photo": ("square", "triangle", "diamond", "ring"),
    "dirty photo": ("star", "sun", "fish", "hourglass"),
}
_CONTEXT_OF: Dict[str, str] = {c: ctx for ctx, names in PREFERRED_CONTEXTS.items() for c in names}
#: The confusable pairs whose two classes prefer the same context.
SHARED_CONTEXT_PAIRS: Tuple[Tuple[str, str], ...] = tuple(
    (a, b) for a, b in CONFUSABLE_PAIRS if _CONTEXT_OF[a] == _CONTEXT_OF[b])


def preferred_context(class_index: int) -> str:
    """The context (an :data:`ID_STYLES` name) that class ``class_index`` prefers in the
    benchmark's photo domain (:data:`PREFERRED_CONTEXTS`: 4 classes per context)."""
    return _CONTEXT_OF[CLASSNAMES[int(class_index)]]


def style_index(name: str) -> int:
    """Index of a style name in :data:`STYLE_NAMES`."""
    try:
        return STYLE_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown style {name!r}; valid: {', '.join(STYLE_NAMES)}") from None


# ------------------------------------------------------------------------- nuisance


@dataclass(frozen=True)
class Nuisance:
    """Distribution of nuisance factors (everything but class and style).

    Attributes:
        rotation: max absolute rotation, degrees (uniform).
        scale: range of the object's half-size as a fraction of the image half-size.
        offset: max absolute centre offset, fraction of the image side (uniform).
        aspect: max relative stretch of one axis.
        backgrounds: background kinds drawn for photo-family styles.
        noise: range of the Gaussian pixel-noise std (0..1 intensities).
        fg_sat / fg_val: object colour saturation / value ranges (HSV).
        bg_sat / bg_val: background colour saturation / value ranges.
    """

    rotation: float = 25.0
    scale: Tuple[float, float] = (0.55, 0.8)
    offset: float = 0.1
    aspect: float = 0.12
    backgrounds: Tuple[str, ...] = ("flat", "gradient", "noise", "blotches")
    noise: Tuple[float, float] = (0.0, 0.03)
    fg_sat: Tuple[float, float] = (0.45, 1.0)
    fg_val: Tuple[float, float] = (0.45, 1.0)
    bg_sat: Tuple[float, float] = (0.0, 0.5)
    bg_val: Tuple[float, float] = (0.2, 0.95)


#: Nuisance of the benchmark's splits (train / val / test, decorrelated, and the geometry
#: of the sketch split): a narrower slice of the pretraining distribution. There is no
#: special imaging: the few-shot headroom is semantic (:data:`CONFUSABLE_PAIRS`) and
#: contextual (:func:`preferred_context`), not an unseen camera.
ID_NUISANCE = Nuisance()
#: Broad nuisance of the pretraining corpus (covers the benchmark's).
PRETRAIN_NUISANCE = Nuisance(
    rotation=40.0, scale=(0.45, 0.85), offset=0.16, aspect=0.2,
    backgrounds=("flat", "gradient", "noise", "blotches", "stripes", "checker"), noise=(0.0, 0.06),
    fg_sat=(0.3, 1.0), fg_val=(0.4, 1.0), bg_sat=(0.0, 0.6), bg_val=(0.15, 0.95),
)

# -------------------------------------------------------------------------- helpers


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _lum(c: np.ndarray) -> float:
    return float(c[..., 0].mean() * 0.299 + c[..., 1].mean() * 0.587 + c[..., 2].mean() * 0.114)


def _gray(img: np.ndarray) -> np.ndarray:
    return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None].repeat(3, -1)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes (reflect padding)."""
    if sigma <= 0:
        return a
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma)).astype(np.float32)
    k /= k.sum()
    pad = [(r, r), (r, r)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, mode="reflect")
    h, w = a.shape[:2]
    tmp = sum(k[i] * p[i:i + h] for i in range(2 * r + 1))
    return sum(k[i] * tmp[:, i:i + w] for i in range(2 * r + 1)).astype(np.float32)


def _morph(a: np.ndarray, r: int, op) -> np.ndarray:
    """Separable square max/min filter of radius ``r`` on a 2-D array."""
    if r <= 0:
        return a
    h, w = a.shape
    p = np.pad(a, r, mode="edge")
    rows = op.reduce([p[i:i + h, :] for i in range(2 * r + 1)])
    return op.reduce([rows[:, i:i + w] for i in range(2 * r + 1)])


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a 2-D array by whole pixels, filling with zeros."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _stripes(S: int, period: float, angle: float, phase: float) -> np.ndarray:
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    t = (x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period + phase
    return 0.5 + 0.5 * np.sin(t)


def _lowfreq(rng: np.random.Generator, S: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1]: random ``cells``² grid upsampled bicubically to S²."""
    small = rng.random((cells, cells, channels)).astype(np.float32)
    out = np.stack([np.asarray(Image.fromarray(small[..., c], mode="F").resize((S, S), Image.BICUBIC))
                    for c in range(channels)], -1)
    return np.clip(out, 0, 1)


def _background(rng: np.random.Generator, kind: str, S: int, nz: Nuisance) -> np.ndarray:
    def col():
        return _hsv(rng.random(), rng.uniform(*nz.bg_sat), rng.uniform(*nz.bg_val))

    c1, c2 = col(), col()
    if kind == "flat":
        return np.broadcast_to(c1, (S, S, 3)).copy()
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:S, 0:S].astype(np.float32) / (S - 1) - 0.5
        t = np.clip(0.5 + x * math.cos(a) + y * math.sin(a), 0, 1)[..., None]
        return c1 * (1 - t) + c2 * t
    if kind == "noise":
        t = _lowfreq(rng, S, int(rng.integers(3, 7)))
        return c1 * (1 - t) + c2 * t
    if kind == "blotches":
        img = np.broadcast_to(c1, (S, S, 3)).copy()
        y, x = np.mgrid[0:S, 0:S].astype(np.float32)
        for _ in range(int(rng.integers(2, 5))):
            cx, cy, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(S / 8, S / 3)
            t = np.clip(1.5 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
            img = img * (1 - t) + col() * t
        return img
    if kind == "stripes":
        t = (_stripes(S, rng.uniform(4, 9), rng.uniform(0, math.pi), rng.uniform(0, 6.3)) > 0.5)
        return np.where(t[..., None], c1, c2 * 0.5 + c1 * 0.5).astype(np.float32)
    if kind == "checker":
        cell = int(rng.integers(3, 7))
        oy, ox = rng.integers(0, cell, 2)
        y, x = np.mgrid[0:S, 0:S]
        t = (((y + oy) // cell + (x + ox) // cell) % 2).astype(bool)
        return np.where(t[..., None], c1, c2 * 0.5 + c1 * 0.5).astype(np.float32)
    raise KeyError(kind)


# -------------------------------------------------------------------------- scenes


class _Scene:
    """One object instance with its sampled geometry; draws masks on demand."""

    def __init__(self, cls: int, rng: np.random.Generator, nz: Nuisance, S: int,
                 scale: Optional[Tuple[float, float]] = None):
        self.rng, self.nz, self.S, self.H = rng, nz, S, S * _SS
        self.prims = _class_prims(CLASSNAMES[cls], rng)
        self.geom = self.sample_geom(scale or nz.scale)
        self._mask: Optional[np.ndarray] = None
        self._mask_hr: Optional[np.ndarray] = None

    def sample_geom(self, scale: Tuple[float, float], offset: Optional[float] = None) -> dict:
        nz, rng = self.nz, self.rng
        off = nz.offset if offset is None else offset
        asp = 1.0 + rng.uniform(-nz.aspect, nz.aspect)
        return dict(
            rot=math.radians(rng.uniform(-nz.rotation, nz.rotation)),
            scale=rng.uniform(*scale),
            cx=0.5 + rng.uniform(-off, off), cy=0.5 + rng.uniform(-off, off),
            sx=math.sqrt(asp), sy=1.0 / math.sqrt(asp),
        )

    def draw_hr(self, geom: dict, wobble: float = 0.0) -> np.ndarray:
        """Binary mask at super-sampled resolution ``[H, H]`` (uint8 0/1)."""
        H = self.H
        unit = geom["scale"] * H / 2
        c, s = math.cos(geom["rot"]), math.sin(geom["rot"])
        if wobble:
            f = self.rng.uniform(1.5, 3.0, 2) / unit
            ph = self.rng.uniform(0, 2 * math.pi, 2)
        im = Image.new("L", (H, H), 0)
        d = ImageDraw.Draw(im)
        for p in self.prims:
            pts = p[1] * [geom["sx"], geom["sy"]]
            x = (c * pts[:, 0] - s * pts[:, 1]) * unit + geom["cx"] * H
            y = (s * pts[:, 0] + c * pts[:, 1]) * unit + geom["cy"] * H
            if wobble:
                x, y = x + wobble * unit * np.sin(f[0] * y + ph[0]), y + wobble * unit * np.sin(f[1] * x + ph[1])
            flat = np.stack([x, y], 1).ravel().tolist()
            if p[0] == "poly":
                d.polygon(flat, fill=p[2])
            else:
                w = max(1, int(round(p[2] * unit)))
                d.line(flat, fill=p[3], width=w, joint="curve")
                for ex, ey in ((x[0], y[0]), (x[-1], y[-1])):
                    d.ellipse([ex - w / 2, ey - w / 2, ex + w / 2, ey + w / 2], fill=p[3])
        return (np.asarray(im) > 127).astype(np.uint8)

    def down(self, hr: np.ndarray) -> np.ndarray:
        S = self.S
        return hr.reshape(S, _SS, S, _SS).mean((1, 3), dtype=np.float32)

    def mask_hr(self) -> np.ndarray:
        if self._mask_hr is None:
            self._mask_hr = self.draw_hr(self.geom)
        return self._mask_hr

    def mask(self) -> np.ndarray:
        """Anti-aliased object mask ``[S, S]`` in [0, 1]."""
        if self._mask is None:
            self._mask = self.down(self.mask_hr())
        return self._mask

    def edge(self, width: float = 1.0, hr: Optional[np.ndarray] = None) -> np.ndarray:
        """Outline of the object, about ``width`` output pixels wide, ``[S, S]`` in [0, 1]."""
        m = self.mask_hr() if hr is None else hr
        r = max(1, int(round(width * _SS / 2)))
        e = _morph(m, r, np.maximum) - _morph(m, r, np.minimum)
        return np.clip(self.down(e) * 1.3, 0, 1)


def _object_colour(rng: np.random.Generator, nz: Nuisance, bg: np.ndarray, min_contrast: float = 0.2) -> np.ndarray:
    """An object colour whose luminance differs from the background's by ``min_contrast``."""
    lb = _lum(bg)
    for _ in range(8):
        fg = _hsv(rng.random(), rng.uniform(*nz.fg_sat), rng.uniform(*nz.fg_val))
        if abs(_lum(fg) - lb) >= min_contrast:
            return fg
    v = 0.1 if lb > 0.5 else 1.0
    return _hsv(rng.random(), rng.uniform(*nz.fg_sat), v)


def _noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return img + rng.normal(0, sigma, img.shape).astype(np.float32)


def _photo(sc: _Scene, contrast: float = 1.0, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """The photo-like base rendering: textured background, shaded object, soft shadow."""
    rng, nz, S = sc.rng, sc.nz, sc.S
    m = sc.mask() if mask is None else mask
    bg = _background(rng, str(rng.choice(nz.backgrounds)), S, nz)
    fg = _object_colour(rng, nz, bg)
    if contrast < 1.0:
        fg = fg * contrast + bg.mean((0, 1)) * (1 - contrast)
    a = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
    shade = (0.9 + 0.4 * (x * math.cos(a) + y * math.sin(a)))[..., None]
    shadow = _blur(_shift(m, 1, 1), 0.8)[..., None]
    bg = bg * (1 - 0.35 * shadow)
    img = bg * (1 - m[..., None]) + (fg * shade) * m[..., None]
    return _noise(img, rng, rng.uniform(*nz.noise))


# Photo-family renderers ---------------------------------------------------------------


def _r_photo(sc: _Scene) -> np.ndarray:
    return _photo(sc)


def _r_bright(sc: _Scene) -> np.ndarray:
    return _photo(sc) * sc.rng.uniform(1.3, 1.6) + sc.rng.uniform(0.12, 0.25)


def _r_dark(sc: _Scene) -> np.ndarray:
    img = _photo(sc) * sc.rng.uniform(0.18, 0.32)
    return _noise(img, sc.rng, 0.015)


def _r_blurry(sc: _Scene) -> np.ndarray:
    return _blur(_photo(sc), sc.rng.uniform(1.0, 1.6))


def _r_bw(sc: _Scene) -> np.ndarray:
    return _gray(_photo(sc))


def _r_pixelated(sc: _Scene) -> np.ndarray:
    img, S = _photo(sc), sc.S
    b = int(sc.rng.choice([3, 4]))
    n = S // b
    small = Image.fromarray(_to_uint8(img)).resize((n, n), Image.BOX)
    return np.asarray(small.resize((S, S), Image.NEAREST), dtype=np.float32) / 255.0


def _r_jpeg(sc: _Scene) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(_photo(sc))).save(buf, format="JPEG", quality=int(sc.rng.integers(4, 12)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _r_many(sc: _Scene) -> np.ndarray:
    n = int(sc.rng.integers(3, 6))
    hr = np.zeros((sc.H, sc.H), np.uint8)
    cells = sc.rng.permutation(9)[:n]
    for c in cells:
        g = sc.sample_geom((0.17, 0.25), offset=0.04)
        g["cx"], g["cy"] = 0.2 + 0.3 * (c % 3) + g["cx"] - 0.5, 0.2 + 0.3 * (c // 3) + g["cy"] - 0.5
        hr |= sc.draw_hr(g)
    sc._mask_hr = hr
    sc._mask = sc.down(hr)
    return _photo(sc)


def _r_dirty(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    img = _photo(sc)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    dirt = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.4, 0.7), rng.uniform(0.2, 0.45))
    for _ in range(int(rng.integers(3, 7))):
        cx, cy, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(2, S / 5)
        t = (np.clip(1.3 - np.hypot(x - cx, (y - cy) * rng.uniform(0.6, 1.6)) / r, 0, 1) * rng.uniform(0.4, 0.7))
        img = img * (1 - t[..., None]) + dirt * t[..., None]
    specks = rng.random((S, S)) < 0.04
    img[specks] *= 0.3
    return img


def _r_hard(sc: _Scene) -> np.ndarray:
    img = _photo(sc, contrast=sc.rng.uniform(0.2, 0.35))
    return _noise(_blur(img, 0.6), sc.rng, 0.04)


# Art-family renderers -----------------------------------------------------------------


def _r_painting(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    m = _blur(sc.mask(), 0.6)[..., None]
    cols = [_hsv(rng.random(), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.9)) for _ in range(3)]
    t = _lowfreq(rng, S, 5, 2)
    bg = cols[0] * (1 - t[..., :1]) + cols[1] * t[..., :1]
    bg = bg * (1 - 0.5 * t[..., 1:]) + cols[2] * 0.5 * t[..., 1:]
    fg = _hsv(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    fg = fg * (0.8 + 0.4 * _lowfreq(rng, S, 6, 3))
    strokes = _stripes(S, rng.uniform(2.5, 4), rng.uniform(0, math.pi), rng.uniform(0, 6.3))[..., None]
    img = bg * (1 - m) + fg * m
    img = img * (0.85 + 0.25 * strokes)
    return np.round(np.clip(img, 0, 1) * 5) / 5  # posterised: few paint tones


def _r_cartoon(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    m = sc.mask()[..., None]
    bg = np.broadcast_to(_hsv(rng.random(), rng.uniform(0.15, 0.35), rng.uniform(0.9, 1.0)), (S, S, 3))
    fg = _hsv(rng.random(), rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0))
    img = bg * (1 - m) + fg * m
    e = sc.edge(2.0)[..., None]
    return img * (1 - e)


_PALETTE = np.array([[1, 0.2, 0.3], [1, 0.85, 0.1], [0.2, 1, 0.4], [0.2, 0.8, 1], [1, 0.4, 1], [1, 0.55, 0.1]],
                    dtype=np.float32)


def _r_video_game(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    n = S // 2
    m = Image.fromarray((sc.mask() * 255).astype(np.uint8)).resize((n, n), Image.BOX)
    m = (np.asarray(m) > 110).astype(np.float32)
    bg = np.broadcast_to(_hsv(rng.uniform(0.55, 0.75), rng.uniform(0.5, 0.9), rng.uniform(0.08, 0.25)), (n, n, 3))
    bg = bg.copy()
    stars = rng.random((n, n)) < 0.04
    bg[stars] = 0.9
    fg = _PALETTE[int(rng.integers(len(_PALETTE)))]
    hi = np.clip(_shift(m, 1, 1) * m, 0, 1)  # inner pixels; the rim gets the darker shade
    body = fg * (0.65 + 0.35 * hi[..., None])
    ring = np.clip(_morph(m, 1, np.maximum) - m, 0, 1)[..., None]
    img = bg * (1 - m[..., None]) + body * m[..., None]
    img = img * (1 - ring) + ring * 1.0
    return np.asarray(Image.fromarray(_to_uint8(img)).resize((S, S), Image.NEAREST), dtype=np.float32) / 255.0


def _r_tattoo(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.5), rng.uniform(0.6, 0.95))
    bg = skin * (0.92 + 0.12 * _lowfreq(rng, S, 4))
    ink = np.array([0.08, 0.1, 0.18], np.float32)
    m = sc.mask()[..., None]
    img = bg
    if rng.random() < 0.6:
        colour = _hsv(rng.choice([0.0, 0.33, 0.6]), 0.7, 0.6)
        img = img * (1 - 0.6 * m) + colour * 0.6 * m
    else:
        hatch = (_stripes(S, 3, math.pi / 4, 0) > 0.7).astype(np.float32)[..., None]
        img = img * (1 - 0.6 * m * hatch) + ink * 0.6 * m * hatch
    e = _blur(sc.edge(1.6), 0.4)[..., None]
    return img * (1 - e) + ink * e


def _r_graffiti(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    brick = _hsv(rng.uniform(0.0, 0.06), rng.uniform(0.45, 0.7), rng.uniform(0.4, 0.7))
    mortar = np.array([0.75, 0.73, 0.7], np.float32) * rng.uniform(0.7, 1.0)
    y, x = np.mgrid[0:S, 0:S]
    bh = int(rng.integers(4, 6))
    row = (y + int(rng.integers(bh))) // bh
    joint = ((y + 0) % bh == 0) | (((x + (row % 2) * 4) % 8) == 0)
    bg = np.where(joint[..., None], mortar, brick * (0.9 + 0.2 * rng.random((S, S, 1)))).astype(np.float32)
    m = sc.mask()
    drips = np.zeros_like(m)
    for c in rng.choice(S, size=int(rng.integers(2, 5)), replace=False):
        col = m[:, c]
        if col.max() > 0.5:
            bottom = int(np.nonzero(col > 0.5)[0].max())
            drips[bottom:min(S, bottom + int(rng.integers(3, 9))), c] = 0.8
    paint = np.clip(_blur(m, 0.7) + drips, 0, 1)[..., None]
    fg = _hsv(rng.random(), rng.uniform(0.8, 1.0), 1.0)
    img = bg * (1 - paint) + fg * paint
    e = _blur(sc.edge(1.5), 0.6)[..., None]
    line = np.float32(0.05) if rng.random() < 0.6 else np.float32(1.0)
    return img * (1 - e) + line * e


def _r_embroidered(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    fabric = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.9))
    y, x = np.mgrid[0:S, 0:S]
    weave = (0.92 + 0.08 * ((x + y) % 2))[..., None]
    bg = fabric * weave
    thread = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    stitch = _stripes(S, 2.0, rng.uniform(0, math.pi), 0.0)[..., None]
    m = sc.mask()[..., None]
    shadow = _blur(_shift(sc.mask(), 1, 1), 0.5)[..., None]
    bg = bg * (1 - 0.3 * shadow)
    img = bg * (1 - m) + thread * (0.7 + 0.4 * stitch) * m
    e = sc.edge(1.0)[..., None]
    return img * (1 - 0.5 * e) + thread * 0.4 * e


def _r_sculpture(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    stone = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.18), 1.0)
    bgv = rng.uniform(0.3, 0.55)
    tex = 0.9 + 0.2 * _lowfreq(rng, S, 8)[..., 0]
    b = _blur(sc.mask(), 1.0)
    relief = b - _shift(b, 1, 1)  # light from the top left
    v = bgv + 0.25 * sc.mask() + 1.1 * relief
    return (stone * (v * tex)[..., None]).astype(np.float32)


def _r_origami(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    bg = np.broadcast_to(_hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.85, 1.0)), (S, S, 3))
    paper = _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.75, 1.0))
    m = sc.mask()
    ys, xs = np.nonzero(m > 0.5) if (m > 0.5).any() else (np.array([S / 2]), np.array([S / 2]))
    cy, cx = ys.mean(), xs.mean()
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    shade = np.ones((S, S), np.float32)
    for _ in range(2):
        a = rng.uniform(0, math.pi)
        side = ((x - cx) * math.cos(a) + (y - cy) * math.sin(a)) > 0
        shade = shade * np.where(side, 0.8, 1.0)
    shadow = _blur(_shift(m, 2, 2), 0.6)[..., None]
    bg = bg * (1 - 0.3 * shadow)
    return bg * (1 - m[..., None]) + paper * shade[..., None] * m[..., None]


def _r_toy(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    bg = _background(rng, "gradient", S, Nuisance(bg_sat=(0.05, 0.25), bg_val=(0.8, 1.0)))
    fg = _hsv(float(rng.choice([0.0, 0.13, 0.33, 0.6])) + rng.uniform(-0.02, 0.02), rng.uniform(0.85, 1.0),
              rng.uniform(0.8, 1.0))
    m = sc.mask()
    bulge = _blur(m, 1.5)
    ys, xs = np.nonzero(m > 0.5) if (m > 0.5).any() else (np.array([S / 2]), np.array([S / 2]))
    hy, hx = np.percentile(ys, 25), np.percentile(xs, 25)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    spec = np.exp(-((y - hy) ** 2 + (x - hx) ** 2) / 6.0) * m
    shadow = _blur(_shift(m, 2, 1), 1.0)[..., None]
    bg = bg * (1 - 0.4 * shadow)
    body = fg * (0.55 + 0.5 * bulge)[..., None] + 0.8 * spec[..., None]
    return bg * (1 - m[..., None]) + body * m[..., None]


def _r_rendering(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    y = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(0.75, 0.95), rng.uniform(0.45, 0.65)
    bg = np.broadcast_to(top * (1 - y) + bottom * y, (S, S, 3)).astype(np.float32)
    m = sc.mask()
    b = _blur(m, 1.3)
    gy, gx = np.gradient(b)
    a = rng.uniform(-2.4, -0.8)  # light from above
    lam = np.clip(0.7 - 2.5 * (gx * math.cos(a) + gy * math.sin(a)), 0.2, 1.3)
    fg = _hsv(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.6, 0.9))
    ao = _blur(_shift(m, 2, 0), 1.5)[..., None]
    bg = bg * (1 - 0.35 * ao)
    return bg * (1 - m[..., None]) + fg * lam[..., None] * m[..., None]


# Sketch-family renderers ---------------------------------------------------------------


def _paper(rng: np.random.Generator, S: int) -> np.ndarray:
    """Off-white paper with grain and faint stains."""
    v = rng.uniform(0.82, 0.97)
    stains = 0.94 + 0.06 * _lowfreq(rng, S, 5)
    return (v * stains + rng.normal(0, 0.025, (S, S, 1)).astype(np.float32)).repeat(3, -1)


def _gaps(rng: np.random.Generator, S: int) -> np.ndarray:
    """A [S, S] 0/1 mask that breaks strokes into pieces (lifted pen, faint pencil)."""
    return (_lowfreq(rng, S, 7)[..., 0] > rng.uniform(0.2, 0.4)).astype(np.float32)


def _stray_lines(rng: np.random.Generator, S: int, n: int) -> np.ndarray:
    """``n`` thin random straight strokes (construction lines, scribbles), ``[S, S]``."""
    H = S * _SS
    im = Image.new("L", (H, H), 0)
    d = ImageDraw.Draw(im)
    for _ in range(n):
        x0, y0, x1, y1 = (rng.uniform(0, H, 4)).tolist()
        d.line([x0, y0, x1, y1], fill=255, width=_SS)
    return np.asarray(im, dtype=np.float32).reshape(S, _SS, S, _SS).mean((1, 3)) / 255.0


def _r_sketch(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    img = _paper(rng, S)
    lead = np.float32(rng.uniform(0.3, 0.6))
    e1 = sc.edge(1.0, sc.draw_hr(sc.geom, wobble=0.05)) * _gaps(rng, S)
    e2 = sc.edge(1.0, sc.draw_hr(sc.geom, wobble=0.08)) * _gaps(rng, S)
    hatch = (_stripes(S, rng.uniform(2.5, 3.5), rng.uniform(0.5, 1.1), 0) > 0.75) * sc.mask() * rng.uniform(0.1, 0.4)
    stray = 0.4 * _stray_lines(rng, S, int(rng.integers(1, 4)))
    dark = np.clip(np.maximum.reduce([0.8 * e1, 0.5 * e2, hatch, stray]), 0, 1)[..., None]
    return img * (1 - dark) + lead * dark


def _r_drawing(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    img = _paper(rng, S)
    ink = np.float32(rng.uniform(0.02, 0.3))
    e = sc.edge(rng.uniform(0.8, 1.4)) * np.maximum(_gaps(rng, S), 0.3)
    guide = 0.0
    if rng.random() < 0.5:  # a faint, slightly misplaced first attempt under the final line
        g = dict(sc.geom, scale=sc.geom["scale"] * rng.uniform(0.9, 1.1), rot=sc.geom["rot"] + rng.uniform(-0.15, 0.15),
                 cx=sc.geom["cx"] + rng.uniform(-0.04, 0.04), cy=sc.geom["cy"] + rng.uniform(-0.04, 0.04))
        guide = 0.3 * sc.edge(0.8, sc.draw_hr(g))
    t = np.clip(np.maximum(e, guide), 0, 1)[..., None]
    return img * (1 - t) + ink * t


def _r_doodle(sc: _Scene) -> np.ndarray:
    rng, S = sc.rng, sc.S
    img = _paper(rng, S)
    y, x = np.mgrid[0:S, 0:S]
    gap = int(rng.integers(4, 6))
    img[(y % gap) == int(rng.integers(gap))] *= np.array([0.8, 0.88, 1.0], np.float32)
    img[:, int(rng.integers(2, 5))] *= np.array([1.0, 0.7, 0.7], np.float32)
    ink = _hsv(float(rng.choice([0.0, 0.6, 0.35, 0.8])), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))
    hr = sc.draw_hr(sc.geom, wobble=0.1)
    e = sc.edge(rng.uniform(1.0, 1.8), hr) * _gaps(rng, S)
    scribble = (_stripes(S, rng.uniform(3, 5), rng.uniform(0, math.pi), 0) > 0.8) * sc.down(hr)
    stray = 0.7 * _stray_lines(rng, S, int(rng.integers(0, 3)))
    t = np.clip(np.maximum.reduce([e, 0.5 * scribble, stray]), 0, 1)[..., None]
    return img * (1 - t) + ink * t


_RENDERERS: Dict[str, Callable[[_Scene], np.ndarray]] = {
    "photo": _r_photo, "bright photo": _r_bright, "dark photo": _r_dark, "blurry photo": _r_blurry,
    "black and white photo": _r_bw, "pixelated photo": _r_pixelated, "jpeg corrupted photo": _r_jpeg,
    "small": _r_photo, "large": _r_photo, "many": _r_many, "dirty photo": _r_dirty, "hard to see": _r_hard,
    "painting": _r_painting, "cartoon": _r_cartoon, "video game": _r_video_game, "tattoo": _r_tattoo,
    "graffiti": _r_graffiti, "embroidered": _r_embroidered, "sculpture": _r_sculpture, "origami": _r_origami,
    "toy": _r_toy, "rendering": _r_rendering, "sketch": _r_sketch, "drawing": _r_drawing, "doodle": _r_doodle,
}
_SCALE_OVERRIDE = {"small": (0.22, 0.32), "large": (0.95, 1.25)}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# -------------------------------------------------------------------------- public API


def render_image(
    class_index: int,
    style: str,
    rng: np.random.Generator,
    nuisance: Nuisance = ID_NUISANCE,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Render one image.

    Args:
        class_index: index into :data:`CLASSNAMES`.
        style: a name from :data:`STYLE_NAMES`.
        rng: the only source of randomness (same state → identical bytes).
        nuisance: distribution of colour, background, geometry and noise.
        size: output side length in pixels (multiple of 2).

    Returns:
        uint8 array ``[size, size, 3]``.
    """
    if style not in _RENDERERS:
        raise KeyError(f"unknown style {style!r}; valid: {', '.join(STYLE_NAMES)}")
    if not 0 <= class_index < len(CLASSNAMES):
        raise IndexError(f"class index {class_index} out of range [0, {len(CLASSNAMES)})")
    scene = _Scene(class_index, rng, nuisance, size, scale=_SCALE_OVERRIDE.get(style))
    return _to_uint8(_RENDERERS[style](scene))


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of stream ``stream`` (one stream per split)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


def render_many(
    labels: Sequence[int],
    styles: Sequence[int],
    *,
    seed: int,
    stream: int,
    nuisance: Nuisance = ID_NUISANCE,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Render a batch: image ``i`` is class ``labels[i]`` in style ``STYLE_NAMES[styles[i]]``
    drawn with :func:`image_rng` ``(seed, stream, i)``. Returns uint8 ``[N, size, size, 3]``."""
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for i, (c, s) in enumerate(zip(labels, styles)):
        out[i] = render_image(int(c), STYLE_NAMES[int(s)], image_rng(seed, stream, i), nuisance, size)
    return out


def sample_grid(classes: Optional[Sequence[int]] = None, styles: Optional[Sequence[str]] = None, seed: int = 0,
                size: int = IMAGE_SIZE, zoom: int = 2, labels: bool = True, benchmark_rows: bool = True) -> Image.Image:
    """A PNG-ready grid, one column per class.

    One row per style as the pretraining corpus shows it (broad nuisance), then, with
    ``benchmark_rows``, three rows as the benchmark splits show them: each class in its
    preferred context (the in-distribution train / val / test majority), the
    decorrelated OOD split (contexts independent of class) and the OOD sketch split.
    """
    classes = list(range(0, len(CLASSNAMES), 3)) if classes is None else list(classes)
    styles = list(STYLE_NAMES) if styles is None else list(styles)
    rows: List[Tuple[str, Callable[[int, int], str], Nuisance]] = []
    for st in styles:
        fam = STYLE_BY_NAME[st].family
        tag = " (ID)" if st in ID_STYLES else " (OOD)" if st in SKETCH_STYLES else ""
        rows.append((f"{st}{tag} [{fam}]", lambda c, k, st=st: st, PRETRAIN_NUISANCE))
    if benchmark_rows:
        rows += [("benchmark: preferred context", lambda c, k: preferred_context(c), ID_NUISANCE),
                 ("benchmark: OOD decorrelated", lambda c, k: ID_STYLES[k % len(ID_STYLES)], ID_NUISANCE),
                 ("benchmark: OOD sketch", lambda c, k: SKETCH_STYLES[k % len(SKETCH_STYLES)], ID_NUISANCE)]
    cell = size * zoom + 2
    left, top = (190, 14) if labels else (0, 0)
    grid = Image.new("RGB", (left + cell * len(classes), cell * len(rows) + top), "white")
    d = ImageDraw.Draw(grid)
    for r, (title, style_of, nz) in enumerate(rows):
        y = top + r * cell
        if labels:
            d.text((4, y + cell // 2 - 6), title, fill="black")
        for k, c in enumerate(classes):
            img = render_image(c, style_of(c, k), image_rng(seed, 99, r * 1000 + k), nz, size)
            tile = Image.fromarray(img).resize((size * zoom, size * zoom), Image.NEAREST)
            grid.paste(tile, (left + k * cell + 1, y + 1))
        if benchmark_rows and r == len(styles) - 1:
            d.line([(0, y + cell - 1), (grid.size[0], y + cell - 1)], fill="black", width=1)
    if labels:
        for k, c in enumerate(classes):
            d.text((left + k * cell + 2, 1), CLASSNAMES[c][:10], fill="black")
    return grid


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fdalign_plugins.world.generator --grid OUT.png``"""
    p = argparse.ArgumentParser(description="Draw sample images of the synthetic style-shift world.")
    p.add_argument("--grid", type=Path, required=True, help="output PNG path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoom", type=int, default=2, help="pixel magnification of each 32 px image")
    args = p.parse_args(argv)
    img = sample_grid(classes=range(0, len(CLASSNAMES), 4), seed=args.seed, zoom=args.zoom)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps the committed picture small
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.grid, optimize=True)
    print(f"wrote {args.grid} ({img.size[0]}x{img.size[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
