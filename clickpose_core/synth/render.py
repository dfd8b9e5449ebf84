"""Pixels: backgrounds, textures and the shape rasteriser behind the synthetic scenes.

Shapes are drawn twice in spirit: once into an integer id buffer (which entity and body part owns
each pixel, painter's order far-to-near) and then coloured from that buffer. Annotations are read
from the same buffer, so visibility flags, boxes and areas agree with the picture exactly.
"""
from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4                      # cv2 sub-pixel bits: coordinates are drawn at 1/16 pixel
_ONE = 1 << _SHIFT


def _fix(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, dtype=np.float64) * _ONE).astype(np.int32)


def draw_capsule(buf: np.ndarray, a: np.ndarray, b: np.ndarray, thickness: float, value: int) -> None:
    """Segment a-b (pixels) with round ends and full width `thickness` pixels."""
    t = max(1, int(round(thickness)))
    pa, pb = _fix(a), _fix(b)
    cv2.line(buf, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), int(value), t, cv2.LINE_8, _SHIFT)
    # cv2's thick lines have round caps only approximately; stamp discs so short limbs stay round.
    r = _fix(np.array([t / 2.0]))[0]
    for p in (pa, pb):
        cv2.circle(buf, (int(p[0]), int(p[1])), int(r), int(value), -1, cv2.LINE_8, _SHIFT)


def draw_hull(buf: np.ndarray, points: np.ndarray, value: int) -> None:
    """Filled convex hull of [n, 2] pixel points."""
    hull = cv2.convexHull(_fix(points).reshape(-1, 1, 2))
    cv2.fillConvexPoly(buf, hull, int(value), cv2.LINE_8, _SHIFT)


def draw_ellipse(buf: np.ndarray, centre: np.ndarray, axes: tuple[float, float], angle_deg: float,
                 value: int) -> None:
    c = _fix(centre)
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(buf, (int(c[0]), int(c[1])), ax, float(angle_deg), 0, 360, int(value), -1, cv2.LINE_8, _SHIFT)


def random_colour(rng: np.random.Generator, dark: bool = False) -> np.ndarray:
    """An RGB colour from a random hue with varied saturation and value."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 256),
                      rng.integers(30, 120) if dark else rng.integers(60, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 90],
                       [160, 105, 70], [120, 80, 50], [90, 60, 40]], dtype=np.float32)
HAIR_TONES = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [170, 130, 80], [200, 170, 110],
                       [130, 130, 130], [90, 30, 20]], dtype=np.float32)


def texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray, kind: str | None = None) -> np.ndarray:
    """[h, w, 3] float32 RGB fill: solid, stripes, gradient, checks or blotchy noise around `colour`."""
    kind = kind or str(rng.choice(["solid", "stripes", "gradient", "checks", "noise"], p=[.3, .25, .2, .1, .15]))
    base = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if kind == "solid":
        out = base.copy()
    elif kind == "stripes":
        other = random_colour(rng)
        period = float(rng.uniform(3, 14))
        ang = float(rng.uniform(0, np.pi))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (xx * np.cos(ang) + yy * np.sin(ang)) / period
        m = ((phase % 1.0) < rng.uniform(0.3, 0.7))[..., None]
        out = np.where(m, base, other)
    elif kind == "checks":
        other = random_colour(rng)
        cell = int(rng.integers(3, 12))
        yy, xx = np.mgrid[0:h, 0:w]
        m = (((yy // cell) + (xx // cell)) % 2 == 0)[..., None]
        out = np.where(m, base, other)
    elif kind == "gradient":
        other = random_colour(rng)
        t = np.linspace(0, 1, h if rng.uniform() < 0.5 else w, dtype=np.float32)
        t = t[:, None, None] if len(t) == h else t[None, :, None]
        out = base * (1 - t) + other * t
    elif kind == "noise":
        small = rng.uniform(-60, 60, size=(max(2, h // 6), max(2, w // 6), 1)).astype(np.float32)
        out = base + cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.ascontiguousarray(out + rng.normal(0, 4, size=(h, w, 1)).astype(np.float32))


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered [h, w, 3] uint8 scene: gradient wall/floor, random shapes and noise."""
    img = texture(rng, h, w, random_colour(rng), kind="gradient")
    horizon = int(rng.uniform(0.3, 0.8) * h)
    img[horizon:] = texture(rng, h - horizon, w, random_colour(rng), kind=str(
        rng.choice(["gradient", "checks", "noise", "stripes"])))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(8, 30))):
        c = tuple(int(v) for v in random_colour(rng))
        kind = rng.integers(0, 4)
        x, y = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        sw, sh = int(rng.integers(5, w // 2)), int(rng.integers(5, h // 2))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + sw, y + sh), c, -1 if rng.uniform() < 0.7 else int(rng.integers(1, 5)))
        elif kind == 1:
            cv2.ellipse(img, (x, y), (sw // 2, sh // 2), float(rng.uniform(0, 180)), 0, 360, c, -1)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), c, int(rng.integers(1, 8)))
        else:
            pts = rng.integers([-w // 4, -h // 4], [w, h], size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], c)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 2.0)))
    noise = rng.normal(0, float(rng.uniform(2, 8)), size=(h, w, 1))
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
