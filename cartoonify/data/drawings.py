"""Procedural cartoon drawings: the demo style images, drawn with :mod:`PIL.ImageDraw`.

Flat saturated colours, thick dark outlines, simple shapes on a white page, drawn at
``SUPERSAMPLE`` times the size and downsampled. :func:`render_style_image` is deterministic:
the same ``(index, size, seed)`` gives the same pixels and caption.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["STYLE_SUFFIX", "MIN_SIZE", "render_style_image"]

#: Every caption ends with this suffix (the style token of the prompt).
STYLE_SUFFIX = ", Disney style"

SUPERSAMPLE = 4  # draw at 4x, then downsample with LANCZOS
MIN_SIZE = 16
WHITE = (255, 255, 255)
OUTLINE = (34, 28, 46)

RGB = tuple[int, int, int]
Point = tuple[float, float]

# Palettes; the order of each dict and list is part of the drawings (indices pick from them).
HAIR_COLOURS: dict[str, RGB] = {"red": (206, 58, 38), "brown": (122, 72, 38), "blonde": (246, 204, 72),
                                "black": (44, 38, 52), "blue": (58, 112, 222), "pink": (242, 108, 172)}
SKIN_TONES: list[RGB] = [(255, 222, 196), (244, 196, 160), (226, 170, 128), (196, 132, 92), (142, 88, 60)]
EYE_COLOURS: list[RGB] = [(52, 120, 220), (46, 160, 90), (120, 70, 40), (130, 70, 200)]
FUR_COLOURS: dict[str, RGB] = {"orange": (240, 140, 44), "grey": (150, 150, 162), "brown": (150, 96, 52),
                               "golden": (232, 186, 84), "black": (58, 52, 64)}
ITEM_COLOURS: dict[str, RGB] = {"red": (222, 50, 50), "blue": (52, 110, 222), "purple": (142, 72, 204),
                                "pink": (240, 110, 170), "teal": (30, 168, 160), "yellow": (248, 206, 52)}
GREEN = (88, 184, 72)
DARK_GREEN = (52, 140, 60)
TRUNK = (128, 82, 44)
PINK = (246, 150, 170)


# colour helpers
def _jitter(rgb: RGB, rng: np.random.Generator, amount: int = 14) -> RGB:
    """Return ``rgb`` with each channel shifted by up to ``amount``."""
    shift = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(rgb, shift))  # type: ignore[return-value]


def _pick(palette: dict[str, RGB], rng: np.random.Generator) -> tuple[str, RGB]:
    """A random colour name from ``palette`` and its colour, jittered by up to 10."""
    name = list(palette)[int(rng.integers(len(palette)))]
    return name, _jitter(palette[name], rng, 10)


def _hsv(h: float, s: float, v: float) -> RGB:
    """Convert HSV in [0, 1] (hue wraps) to an 8-bit RGB tuple."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _hue_of(rgb: RGB) -> float:
    """Hue of an RGB colour in [0, 1)."""
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def _accent(rng: np.random.Generator, avoid: Sequence[RGB] = ()) -> RGB:
    """A saturated colour whose hue is at least 0.15 away from ``avoid``."""
    avoid_hues = [_hue_of(c) for c in avoid]
    for _ in range(64):
        h = float(rng.uniform(0, 1))
        if all(min(abs(h - a), 1 - abs(h - a)) >= 0.15 for a in avoid_hues):
            break
    return _hsv(h, float(rng.uniform(0.6, 0.85)), float(rng.uniform(0.85, 1.0)))


def _lighter(rgb: RGB, t: float = 0.45) -> RGB:
    """Blend ``rgb`` towards white by ``t``."""
    return tuple(round(c + (255 - c) * t) for c in rgb)  # type: ignore[return-value]


def _darker(rgb: RGB, t: float = 0.25) -> RGB:
    """Blend ``rgb`` towards black by ``t``."""
    return tuple(round(c * (1 - t)) for c in rgb)  # type: ignore[return-value]


# drawing in unit coordinates
@dataclass
class _Pen:
    """Thin wrapper around ImageDraw using unit coordinates in [0, 1]."""

    draw: ImageDraw.ImageDraw
    scale: float
    line: int

    def _box(self, cx: float, cy: float, rx: float, ry: float) -> list[float]:
        """Pixel bounding box of an ellipse given centre and radii."""
        s = self.scale
        return [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]

    def _pts(self, pts: Sequence[Point]) -> list[tuple[float, float]]:
        """Scale unit points to pixels."""
        return [(x * self.scale, y * self.scale) for x, y in pts]

    def _w(self, k: float) -> int:
        """Outline width scaled by ``k`` (at least one pixel)."""
        return max(1, round(self.line * k))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB | None,
                outline: bool = True, k: float = 1.0) -> None:
        """Filled ellipse with an optional thick dark outline."""
        self.draw.ellipse(self._box(cx, cy, rx, ry), fill=fill,
                          outline=OUTLINE if outline else None, width=self._w(k))

    def circle(self, cx: float, cy: float, r: float, fill: RGB | None,
               outline: bool = True, k: float = 1.0) -> None:
        """Filled circle with an optional outline."""
        self.ellipse(cx, cy, r, r, fill, outline, k)

    def polygon(self, pts: Sequence[Point], fill: RGB | None, outline: bool = True,
                k: float = 1.0) -> None:
        """Filled polygon with an optional outline."""
        self.draw.polygon(self._pts(pts), fill=fill,
                          outline=OUTLINE if outline else None, width=self._w(k))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB | None,
             radius: float = 0.0, outline: bool = True, k: float = 1.0) -> None:
        """(Rounded) rectangle with an optional outline."""
        s = self.scale
        self.draw.rounded_rectangle([x0 * s, y0 * s, x1 * s, y1 * s], radius=radius * s,
                                    fill=fill, outline=OUTLINE if outline else None,
                                    width=self._w(k))

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
              fill: RGB | None, outline: bool = True, k: float = 1.0) -> None:
        """Ellipse segment (chord) between two angles in degrees."""
        self.draw.chord(self._box(cx, cy, rx, ry), start, end, fill=fill,
                        outline=OUTLINE if outline else None, width=self._w(k))

    def arc(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
            k: float = 1.0, colour: RGB = OUTLINE) -> None:
        """Thick arc between two angles in degrees."""
        self.draw.arc(self._box(cx, cy, rx, ry), start, end, fill=colour, width=self._w(k))

    def stroke(self, pts: Sequence[Point], k: float = 1.0, colour: RGB = OUTLINE) -> None:
        """Polyline with rounded joints."""
        self.draw.line(self._pts(pts), fill=colour, width=self._w(k), joint="curve")

    def blob(self, circles: Sequence[tuple[float, float, float]], fill: RGB) -> None:
        """Union of circles with one merged outline (clouds, tree tops)."""
        for cx, cy, r in circles:
            self.circle(cx, cy, r, fill)
        inset = self.line / self.scale
        for cx, cy, r in circles:
            self.circle(cx, cy, r - inset, fill, outline=False)


def _eye(pen: _Pen, cx: float, cy: float, r: float, iris: RGB) -> None:
    """Big cartoon eye: white, coloured iris, pupil and two highlights."""
    pen.ellipse(cx, cy, r * 0.8, r, WHITE, k=0.8)
    pen.circle(cx, cy + r * 0.2, r * 0.58, iris, outline=False)
    pen.circle(cx, cy + r * 0.22, r * 0.3, OUTLINE, outline=False)
    pen.circle(cx - r * 0.22, cy - r * 0.05, r * 0.17, WHITE, outline=False)
    pen.circle(cx + r * 0.2, cy + r * 0.42, r * 0.08, WHITE, outline=False)


# subjects: each draws onto a pen and returns its caption (without the suffix)
def _hair_back(pen: _Pen, girl: bool, cx: float, cy: float, r: float, hair: RGB) -> None:
    """Hair behind the head; a girl's long hair hangs down to the shoulders."""
    if girl:
        top = cy + r * 0.95
        pen.rect(cx - r * 1.16, cy - r * 0.2, cx + r * 1.16, top + r * 0.3, hair, radius=r * 0.4)
        pen.circle(cx, cy - r * 0.05, r * 1.16, hair)
        pen.circle(cx, cy - r * 0.05, r * 1.16 - pen.line / pen.scale, hair, outline=False)
    else:
        pen.circle(cx, cy - r * 0.06, r * 1.08, hair)


def _body(pen: _Pen, rng: np.random.Generator, cx: float, cy: float, r: float,
          colours: tuple[RGB, RGB, RGB]) -> None:
    """Striped shirt with a collar, and the neck; ``colours`` is (shirt, hair, skin)."""
    shirt, hair, skin = colours
    top = cy + r * 0.95
    bw = r * float(rng.uniform(1.05, 1.3))
    pen.rect(cx - bw, top, cx + bw, 0.9, shirt, radius=r * 0.55)
    stripe = _accent(rng, avoid=[shirt, hair, skin])
    inset = pen.line / pen.scale
    y0, y1 = top + r * 0.55, top + r * 0.8
    pen.rect(cx - bw + inset, y0, cx + bw - inset, y1, stripe, outline=False)
    pen.stroke([(cx - bw, y0), (cx + bw, y0)], k=0.7)
    pen.stroke([(cx - bw, y1), (cx + bw, y1)], k=0.7)
    pen.polygon([(cx - r * 0.35, top), (cx + r * 0.35, top), (cx, top + r * 0.45)],
                _lighter(shirt, 0.5), k=0.7)
    pen.rect(cx - r * 0.22, cy + r * 0.7, cx + r * 0.22, top + r * 0.12, skin, k=0.7)


def _fringe(pen: _Pen, rng: np.random.Generator, girl: bool, cx: float, cy: float, r: float,
            hair: RGB, shirt: RGB) -> None:
    """Hair on top of the head: a side parting and a bow, or three spikes."""
    pen.chord(cx, cy - r * 0.42, r * 1.06, r * 0.66, 180, 360, hair)
    if girl:
        pen.chord(cx - r * 0.35, cy - r * 0.5, r * 0.5, r * 0.32, 0, 180, hair, k=0.7)
        pen.chord(cx, cy - r * 0.42, r * 1.06, r * 0.66, 180, 360, hair, outline=False)
        bow = _accent(rng, avoid=[hair, shirt])
        bx, by = cx + r * 0.62, cy - r * 0.78
        pen.polygon([(bx, by), (bx - r * 0.32, by - r * 0.2), (bx - r * 0.32, by + r * 0.2)], bow, k=0.7)
        pen.polygon([(bx, by), (bx + r * 0.32, by - r * 0.2), (bx + r * 0.32, by + r * 0.2)], bow, k=0.7)
        pen.circle(bx, by, r * 0.09, bow, k=0.6)
    else:
        for i in range(3):
            x = cx + r * (-0.45 + 0.4 * i)
            pen.polygon([(x - r * 0.22, cy - r * 0.9), (x + r * 0.05, cy - r * 1.32),
                         (x + r * 0.22, cy - r * 0.9)], hair, k=0.7)
        pen.chord(cx, cy - r * 0.42, r * 1.06, r * 0.66, 180, 360, hair, outline=False)


def _face(pen: _Pen, rng: np.random.Generator, cx: float, cy: float, r: float, iris: RGB) -> None:
    """Eyes, brows, cheeks, nose and a smile (closed or open)."""
    ey = cy + r * 0.12
    for side in (-1, 1):
        ex = cx + side * r * 0.4
        _eye(pen, ex, ey, r * 0.26, iris)
        pen.arc(ex, ey - r * 0.3, r * 0.18, r * 0.08, 200, 340, k=0.6)
        pen.ellipse(cx + side * r * 0.68, cy + r * 0.5, r * 0.13, r * 0.08, PINK, outline=False)
    pen.arc(cx, cy + r * 0.42, r * 0.06, r * 0.04, 20, 160, k=0.5)
    if rng.uniform() < 0.5:
        pen.arc(cx, cy + r * 0.5, r * 0.3, r * 0.22, 25, 155, k=0.8)
    else:
        pen.chord(cx, cy + r * 0.55, r * 0.24, r * 0.2, 0, 180, (150, 40, 60), k=0.7)
        pen.ellipse(cx, cy + r * 0.68, r * 0.1, r * 0.05, (236, 110, 120), outline=False)


def _draw_character(pen: _Pen, rng: np.random.Generator, variant: int) -> str:
    """A modern cartoon girl or boy: round head, big eyes, smile, hair, body."""
    girl = variant % 2 == 0
    hair_name = list(HAIR_COLOURS)[variant % len(HAIR_COLOURS)]
    hair = _jitter(HAIR_COLOURS[hair_name], rng, 10)
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    shirt = _accent(rng, avoid=[hair, skin])
    iris = EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))]
    cx = 0.5 + float(rng.uniform(-0.05, 0.05))
    cy = float(rng.uniform(0.37, 0.42))
    r = float(rng.uniform(0.18, 0.21))
    _hair_back(pen, girl, cx, cy, r, hair)
    _body(pen, rng, cx, cy, r, (shirt, hair, skin))
    for side in (-1, 1):  # ears, then the head
        pen.circle(cx + side * r * 0.98, cy + r * 0.1, r * 0.2, skin, k=0.8)
    pen.circle(cx, cy, r, skin)
    _fringe(pen, rng, girl, cx, cy, r, hair, shirt)
    _face(pen, rng, cx, cy, r, iris)
    return f"a cartoon {'girl' if girl else 'boy'} with {hair_name} hair"


def _animal_ears(pen: _Pen, species: str, cx: float, cy: float, r: float,
                 fur: RGB, inner: RGB) -> None:
    """Species-specific ears, drawn behind the head."""
    for side in (-1, 1):
        x = cx + side * r * 0.62
        if species == "cat":
            pen.polygon([(x - side * r * 0.42, cy - r * 0.55), (x + side * r * 0.3, cy - r * 1.25),
                         (x + side * r * 0.42, cy - r * 0.3)], fur)
            pen.polygon([(x - side * r * 0.18, cy - r * 0.62), (x + side * r * 0.24, cy - r * 1.02),
                         (x + side * r * 0.28, cy - r * 0.5)], inner, outline=False)
        elif species == "bear":
            pen.circle(x + side * r * 0.05, cy - r * 0.78, r * 0.32, fur)
            pen.circle(x + side * r * 0.05, cy - r * 0.78, r * 0.16, inner, outline=False)
        elif species == "bunny":
            pen.ellipse(x - side * r * 0.22, cy - r * 1.3, r * 0.22, r * 0.62, fur)
            pen.ellipse(x - side * r * 0.22, cy - r * 1.25, r * 0.1, r * 0.45, inner, outline=False)


def _draw_animal(pen: _Pen, rng: np.random.Generator, variant: int) -> str:
    """A sitting cartoon animal (cat, dog, bear, bunny) with ears and snout."""
    species = ("cat", "dog", "bear", "bunny")[variant % 4]
    fur_name, fur = _pick(FUR_COLOURS, rng)
    muzzle = _lighter(fur, 0.6)
    inner = PINK if species in ("cat", "bunny") else _lighter(fur, 0.45)
    collar = _accent(rng, avoid=[fur])
    iris = EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))]
    cx = 0.5 + float(rng.uniform(-0.05, 0.05))
    r = float(rng.uniform(0.17, 0.2))
    cy = float(rng.uniform(0.4, 0.44)) + (0.05 if species == "bunny" else 0.0)

    # tail, body and paws
    if species == "cat":
        inset = 0.8 * pen.line / pen.scale
        pen.arc(cx + r * 1.2, 0.74, r * 0.5, r * 0.6, 200, 80, k=3.2)
        pen.arc(cx + r * 1.2, 0.74, r * 0.5 - inset, r * 0.6 - inset, 202, 78, k=1.6, colour=fur)
    else:
        pen.circle(cx + r * 1.1, 0.8, r * 0.25, fur)
    pen.ellipse(cx, 0.72, r * 1.05, min(r * 1.0, 0.9 - 0.72), fur)
    pen.ellipse(cx, 0.74, r * 0.55, r * 0.62, muzzle, outline=False)
    for side in (-1, 1):
        pen.ellipse(cx + side * r * 0.5, 0.87, r * 0.3, r * 0.18, fur, k=0.8)

    _animal_ears(pen, species, cx, cy, r, fur, inner)
    pen.circle(cx, cy, r, fur)
    if species == "dog":
        for side in (-1, 1):
            pen.ellipse(cx + side * r * 0.95, cy + r * 0.15, r * 0.28, r * 0.6, _darker(fur, 0.3))

    # bandana with a tag, and a toy ball
    pen.polygon([(cx - r * 0.7, cy + r * 0.9), (cx + r * 0.7, cy + r * 0.9), (cx, cy + r * 1.6)], collar)
    pen.rect(cx - r * 0.7, cy + r * 0.86, cx + r * 0.7, cy + r * 1.04, _darker(collar, 0.2),
             radius=r * 0.08, k=0.7)
    ball = _accent(rng, avoid=[collar, fur])
    br = r * 0.42
    bx, by = cx - r * 1.5, 0.9 - br
    pen.circle(bx, by, br, ball)
    pen.chord(bx, by, br, br, 200, 340, _lighter(ball, 0.6), outline=False)
    pen.arc(bx, by, br * 0.99, br * 0.99, 0, 360, k=1.0)

    # face
    for side in (-1, 1):
        _eye(pen, cx + side * r * 0.38, cy - r * 0.08, r * 0.24, iris)
        pen.ellipse(cx + side * r * 0.62, cy + r * 0.38, r * 0.12, r * 0.07, PINK, outline=False)
    sy = cy + r * 0.42
    pen.ellipse(cx, sy, r * 0.36, r * 0.26, muzzle, k=0.7)
    pen.polygon([(cx - r * 0.12, sy - r * 0.12), (cx + r * 0.12, sy - r * 0.12), (cx, sy + r * 0.02)],
                OUTLINE if species != "bunny" else PINK, k=0.5)
    pen.arc(cx - r * 0.08, sy + r * 0.04, r * 0.08, r * 0.08, 10, 170, k=0.5)
    pen.arc(cx + r * 0.08, sy + r * 0.04, r * 0.08, r * 0.08, 10, 170, k=0.5)
    if species == "cat":
        for side in (-1, 1):
            for dy in (-0.06, 0.06):
                pen.stroke([(cx + side * r * 0.4, sy + r * dy), (cx + side * r * 0.95, sy + r * dy * 2.2)], k=0.35)
    return f"a cartoon {fur_name} {species}"


def _ground(pen: _Pen, cx: float, y: float, rx: float) -> None:
    """Small grass patch the objects stand on."""
    pen.chord(cx, y, rx, 0.07, 180, 360, GREEN)


def _draw_house(pen: _Pen, rng: np.random.Generator, cx: float) -> str:
    """A little house with roof, chimney, door and windows."""
    roof_name, roof = _pick(ITEM_COLOURS, rng)
    wall = _lighter(_accent(rng, avoid=[roof]), 0.55)
    w, base = float(rng.uniform(0.24, 0.3)), 0.8
    top = base - float(rng.uniform(0.3, 0.36))
    _ground(pen, cx, base + 0.04, w + 0.1)
    pen.rect(cx + w * 0.45, top - 0.2, cx + w * 0.7, top, _darker(roof, 0.2))
    pen.rect(cx - w, top, cx + w, base, wall)
    pen.polygon([(cx - w - 0.05, top + 0.01), (cx, top - 0.24), (cx + w + 0.05, top + 0.01)], roof)
    pen.rect(cx - 0.06, base - 0.17, cx + 0.06, base, _darker(roof, 0.35), radius=0.05)
    pen.circle(cx + 0.03, base - 0.08, 0.012, (250, 210, 70), outline=False)
    for side in (-1, 1):
        x = cx + side * w * 0.6
        pen.rect(x - 0.055, top + 0.06, x + 0.055, top + 0.17, (150, 210, 250), k=0.8)
        pen.stroke([(x, top + 0.06), (x, top + 0.17)], k=0.6)
        pen.stroke([(x - 0.055, top + 0.115), (x + 0.055, top + 0.115)], k=0.6)
    return f"a cartoon house with a {roof_name} roof"


def _draw_tree(pen: _Pen, rng: np.random.Generator, cx: float) -> str:
    """A round leafy tree with fruit."""
    fruit = (226, 44, 44) if rng.uniform() < 0.5 else (250, 150, 40)
    _ground(pen, cx, 0.86, 0.26)
    pen.polygon([(cx - 0.06, 0.84), (cx - 0.035, 0.5), (cx + 0.035, 0.5), (cx + 0.06, 0.84)], TRUNK)
    circles = [(cx + float(dx), 0.36 + float(dy), float(rr)) for dx, dy, rr in
               [(-0.16, 0.05, 0.13), (0.16, 0.05, 0.13), (0.0, -0.08, 0.16),
                (-0.08, 0.12, 0.12), (0.09, 0.12, 0.12)]]
    circles = [(x, y + float(rng.uniform(-0.015, 0.015)), r + float(rng.uniform(-0.01, 0.01)))
               for x, y, r in circles]
    pen.blob(circles, _jitter(GREEN, rng, 12))
    for _ in range(5):
        pen.circle(cx + float(rng.uniform(-0.2, 0.2)), float(rng.uniform(0.26, 0.5)), 0.025, fruit, k=0.6)
    return "a cartoon apple tree" if fruit[1] < 100 else "a cartoon orange tree"


def _draw_castle(pen: _Pen, rng: np.random.Generator, cx: float) -> str:
    """A fairy-tale castle with cone-roofed towers on a green hill."""
    roof_name, roof = _pick(ITEM_COLOURS, rng)
    stone = _jitter((226, 218, 236), rng, 8)
    pen.chord(cx, 0.9, 0.4, 0.22, 180, 360, GREEN)
    pen.rect(cx - 0.17, 0.5, cx + 0.17, 0.76, stone)
    for i in range(4):  # battlements
        x = cx - 0.17 + i * 0.1
        pen.rect(x, 0.46, x + 0.05, 0.51, stone, k=0.7)
    towers = [(-0.22, 0.4, 0.06), (0.22, 0.4, 0.06), (0.0, 0.3, 0.07)]
    for dx, top, tw in towers:
        x = cx + dx
        pen.rect(x - tw, top, x + tw, 0.76, stone)
        pen.polygon([(x - tw - 0.02, top + 0.01), (x, top - 0.16), (x + tw + 0.02, top + 0.01)], roof)
        pen.stroke([(x, top - 0.16), (x, top - 0.21)], k=0.6)
        pen.polygon([(x, top - 0.21), (x + 0.05, top - 0.195), (x, top - 0.18)], _accent(rng, [roof]), k=0.4)
        pen.rect(x - 0.015, top + 0.06, x + 0.015, top + 0.11, (80, 70, 120), radius=0.012, k=0.5)
    pen.chord(cx, 0.76, 0.05, 0.09, 180, 360, (120, 80, 50), k=0.8)
    return f"a castle with {roof_name} towers on a hill"


def _draw_cup(pen: _Pen, rng: np.random.Generator, cx: float) -> str:
    """A teacup on a saucer with steam and a heart."""
    name, cup = _pick(ITEM_COLOURS, rng)
    saucer = _lighter(_accent(rng, avoid=[cup]), 0.3)
    pen.ellipse(cx, 0.78, 0.3, 0.06, saucer)
    inset = pen.line / pen.scale
    pen.ellipse(cx + 0.22, 0.58, 0.09, 0.08, None, k=3.0)  # handle: dark ring ...
    pen.draw.ellipse(pen._box(cx + 0.22, 0.58, 0.09 - inset, 0.08 - inset),
                     outline=cup, width=pen._w(1.0))  # ... filled with the cup colour
    pen.chord(cx, 0.48, 0.22, 0.3, 0, 180, cup)
    pen.ellipse(cx, 0.48, 0.22, 0.05, _darker(cup, 0.45))
    heart = WHITE if rng.uniform() < 0.5 else _lighter(saucer, 0.2)
    hx, hy = cx, 0.6
    pen.circle(hx - 0.025, hy, 0.03, heart, outline=False)
    pen.circle(hx + 0.025, hy, 0.03, heart, outline=False)
    pen.polygon([(hx - 0.054, hy + 0.01), (hx + 0.054, hy + 0.01), (hx, hy + 0.07)], heart, outline=False)
    for i in (-1, 0, 1):
        x = cx + i * 0.08
        pen.stroke([(x, 0.38), (x - 0.025, 0.33), (x + 0.02, 0.27), (x - 0.01, 0.21)], k=0.6,
                   colour=(170, 170, 190))
    return f"a cartoon {name} teacup"


def _draw_object(pen: _Pen, rng: np.random.Generator, variant: int) -> str:
    """One of: house, tree, castle, cup."""
    cx = 0.5 + float(rng.uniform(-0.04, 0.04))
    draw = (_draw_house, _draw_tree, _draw_castle, _draw_cup)[variant % 4]
    return draw(pen, rng, cx)


def _draw_scene(pen: _Pen, rng: np.random.Generator, variant: int) -> str:
    """Landscape contents (sky, sun, clouds, hills) for the vignette."""
    kind = ("sunny", "sunset", "river", "mountains")[variant % 4]
    sky = (252, 176, 120) if kind == "sunset" else _jitter((140, 206, 250), rng, 10)
    pen.rect(0, 0, 1, 1, sky, outline=False)
    sx, sy = float(rng.uniform(0.3, 0.7)), (0.55 if kind == "sunset" else float(rng.uniform(0.22, 0.32)))
    sun = (250, 110, 60) if kind == "sunset" else (252, 214, 60)
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        pen.stroke([(sx + 0.1 * np.cos(a), sy + 0.1 * np.sin(a)),
                    (sx + 0.14 * np.cos(a), sy + 0.14 * np.sin(a))], k=0.8, colour=sun)
    pen.circle(sx, sy, 0.075, sun)
    if kind == "mountains":
        for mx, h in ((0.3, 0.3), (0.62, 0.38)):
            pen.polygon([(mx - 0.25, 0.7), (mx, 0.7 - h), (mx + 0.25, 0.7)], (150, 140, 190))
            pen.polygon([(mx - 0.065, 0.7 - h * 0.74), (mx, 0.7 - h), (mx + 0.065, 0.7 - h * 0.74)],
                        WHITE, k=0.6)
    for _ in range(2):
        x, y = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.14, 0.3))
        pen.blob([(x - 0.05, y, 0.04), (x, y - 0.02, 0.05), (x + 0.05, y, 0.04)], WHITE)
    hills = [(0.2, 0.82, 0.45, 0.2), (0.8, 0.85, 0.5, 0.22), (0.5, 0.98, 0.7, 0.2)]
    for i, (hx, hy, rx, ry) in enumerate(hills):
        shade = GREEN if i % 2 == 0 else DARK_GREEN
        pen.ellipse(hx + float(rng.uniform(-0.05, 0.05)), hy, rx, ry, _jitter(shade, rng, 10))
    if kind == "river":
        pen.polygon([(0.45, 0.8), (0.52, 0.8), (0.62, 1.0), (0.4, 1.0)], (70, 150, 230))
    tx = float(rng.uniform(0.25, 0.75))
    pen.stroke([(tx, 0.76), (tx, 0.68)], k=1.5, colour=TRUNK)
    pen.blob([(tx, 0.64, 0.05)], _jitter(DARK_GREEN, rng, 10))
    captions = {
        "sunny": "a sunny landscape with green hills",
        "sunset": "a sunset over rolling green hills",
        "river": "a landscape with a river between hills",
        "mountains": "a landscape with snowy mountains and hills",
    }
    return captions[kind]


def _draw_landscape(pen: _Pen, rng: np.random.Generator, variant: int) -> str:
    """A round storybook vignette of a landscape on the white page."""
    canvas = pen.draw._image  # type: ignore[attr-defined]
    scene = Image.new("RGB", canvas.size, WHITE)
    caption = _draw_scene(_Pen(ImageDraw.Draw(scene), pen.scale, pen.line), rng, variant)
    cx = 0.5 + float(rng.uniform(-0.03, 0.03))
    cy = 0.5 + float(rng.uniform(-0.03, 0.03))
    rx, ry = float(rng.uniform(0.36, 0.42)), float(rng.uniform(0.34, 0.4))
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).ellipse(pen._box(cx, cy, rx, ry), fill=255)
    canvas.paste(scene, (0, 0), mask)
    pen.ellipse(cx, cy, rx, ry, None, k=1.2)
    # a cloud poking out of the frame
    x = cx + rx * float(rng.choice([-0.75, 0.75]))
    y = cy - ry * 0.8
    pen.blob([(x - 0.05, y, 0.04), (x, y - 0.025, 0.05), (x + 0.05, y, 0.04)], WHITE)
    return caption


#: Subject drawers, cycled by image index.
SUBJECTS: tuple[Callable[[_Pen, np.random.Generator, int], str], ...] = (
    _draw_character, _draw_animal, _draw_object, _draw_landscape)


def render_style_image(index: int, size: int = 512, seed: int = 0) -> tuple[Image.Image, str]:
    """Render style image ``index`` and return it with its full caption.

    Subjects cycle character -> animal -> object -> landscape; the variant
    within a subject cycles with ``index // 4``.  Colours, positions and
    sizes come from ``numpy.random.default_rng([seed, index])`` so every
    image is independent of ``n``.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    rng = np.random.default_rng([seed, index])
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), WHITE)
    pen = _Pen(ImageDraw.Draw(img), float(big), max(1, round(big * 0.011)))
    subject = SUBJECTS[index % len(SUBJECTS)]
    caption = subject(pen, rng, index // len(SUBJECTS))
    return img.resize((size, size), Image.LANCZOS), caption + STYLE_SUFFIX

