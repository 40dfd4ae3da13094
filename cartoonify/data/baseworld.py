"""The base world: captioned photo-like images that stand in for photographs when pretraining the tiny model.

Two kinds of image, drawn at random per index (``PHOTO_SHARE`` of them photo crops):

* **photo crops**: random square crops (position, scale, horizontal flip) of photographs bundled with
  scikit-image (:data:`PHOTOS`), captioned with a subject word, e.g. ``"a photo of a cat"``.  The photos in
  :data:`HELD_OUT_PHOTOS` (the test photos that get stylized) are never used.
* **rendered scenes**: a shaded ground (grass, sand, water or a coloured floor) under a sky or in front of a
  wall, with one to three lit objects (ball, box, cylinder, cone) casting soft shadows, plus texture and
  sensor noise.  Edges are soft; there are no outlines and no white page.  The caption says what was drawn,
  e.g. ``"a photo of a red ball and a blue box on grass under a blue sky"``.

Every caption word is in :data:`BASE_WORDS`.  :func:`render_base_image` is deterministic: the same
``(index, size, seed)`` gives the same pixels and caption, independent of any other index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BASE_WORDS",
    "HELD_OUT_PHOTOS",
    "PHOTOS",
    "PHOTO_SHARE",
    "make_base_dataset",
    "render_base_image",
]

#: scikit-image photos that are never used: they are the held-out photos to stylize.
HELD_OUT_PHOTOS: tuple[str, ...] = ("astronaut", "camera")

#: scikit-image photo loader name -> (caption subject, sampling weight).  All ship inside scikit-image.
PHOTOS: dict[str, tuple[str, float]] = {
    "chelsea": ("a cat", 2.0),
    "coffee": ("a cup of coffee", 2.0),
    "rocket": ("a rocket", 2.0),
    "coins": ("coins", 1.0),
    "moon": ("the moon", 1.0),
    "brick": ("a brick wall", 1.0),
    "grass": ("grass", 1.0),
    "gravel": ("gravel", 1.0),
}
assert not set(PHOTOS) & set(HELD_OUT_PHOTOS)

#: Share of images that are photo crops; the rest are rendered scenes.
PHOTO_SHARE = 0.4

RGB = tuple[int, int, int]

#: Object colours (the order is part of the images: indices pick from it).
COLOURS: dict[str, RGB] = {
    "red": (190, 40, 35), "orange": (220, 120, 30), "yellow": (225, 195, 45), "green": (60, 150, 60),
    "blue": (45, 85, 185), "purple": (120, 60, 160), "pink": (225, 120, 160), "brown": (125, 80, 45),
    "gray": (125, 125, 130),
}
OBJECTS = ("ball", "box", "cylinder", "cone")
#: Skies: name -> (top colour, horizon colour).
SKIES: dict[str, tuple[RGB, RGB]] = {
    "blue": ((55, 100, 180), (150, 180, 210)),
    "orange": ((85, 70, 120), (225, 140, 80)),
    "gray": ((105, 110, 120), (170, 172, 176)),
}
#: Outdoor grounds: name -> (colour, texture amplitude).
GROUNDS: dict[str, tuple[RGB, float]] = {
    "grass": ((70, 125, 45), 0.22),
    "sand": ((195, 170, 120), 0.10),
    "water": ((40, 90, 135), 0.14),
}

#: Every word that can appear in a caption.
BASE_WORDS: tuple[str, ...] = tuple(sorted(
    {"a", "an", "and", "by", "of", "on", "photo", "sky", "under", "wall", "floor"}
    | set(COLOURS) | set(OBJECTS) | set(GROUNDS)
    | {word for subject, _ in PHOTOS.values() for word in subject.split()}
))

SUPERSAMPLE = 4  # object masks are drawn at 4x and area-averaged


def _a(word: str) -> str:
    """``word`` with its indefinite article: ``"a red"``, ``"an orange"``."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


# photo crops
@functools.cache
def _photo(name: str) -> np.ndarray:
    """Bundled scikit-image photo ``name`` as a uint8 (H, W, 3) array; held-out photos are refused."""
    if name in HELD_OUT_PHOTOS or name not in PHOTOS:
        raise ValueError(f"{name!r} is not a base-world photo")
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3].astype(np.uint8))
    image.flags.writeable = False  # shared by every crop
    return image


def _photo_crop(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A random square crop of a base-world photo, resized to ``size`` with LANCZOS."""
    names = list(PHOTOS)
    weights = np.array([PHOTOS[n][1] for n in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    photo = _photo(name)
    h, w = photo.shape[:2]
    side = max(8, round(min(h, w) * float(rng.uniform(0.3, 1.0))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y:y + side, x:x + side]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    image = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.LANCZOS)
    return image, f"a photo of {PHOTOS[name][0]}"


# rendered scenes: helpers
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1], shape (size, size): a ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(up) / 1.5, -1.0, 1.0)


def _mask(size: int, *shapes: tuple[str, list]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape (size, size), of the union of ``shapes``.

    Each shape is ``("ellipse" | "rectangle", [x0, y0, x1, y1])`` or ``("polygon", [(x, y), ...])`` in unit
    coordinates; they are filled at ``SUPERSAMPLE`` times the size and area-averaged down.
    """
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, coords in shapes:
        if kind == "polygon":
            draw.polygon([(x * big, y * big) for x, y in coords], fill=255)
        else:
            getattr(draw, kind)([c * big for c in coords], fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _blend(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Composite ``colour`` (H, W, 3 or 3) over ``image`` in place with coverage ``mask``."""
    image += mask[:, :, None] * (colour - image)


def _colour(name_rgb: RGB, rng: np.random.Generator, amount: float = 0.08) -> np.ndarray:
    """Colour as floats in [0, 1], each channel scaled by up to ``1 +- amount``."""
    return np.asarray(name_rgb, np.float32) / 255.0 * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)


@dataclass
class _Scene:
    """Geometry and lighting shared by the drawers: unit pixel grids, horizon, light side."""

    size: int
    u: np.ndarray  # x in [0, 1], shape (size, size)
    v: np.ndarray  # y in [0, 1]
    horizon: float
    light: float  # light comes from the left (-1) or the right (+1), and from above


# rendered scenes: background
def _sky_ground(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """An outdoor background: sky gradient above the horizon, textured ground below."""
    s, u, v, h = scene.size, scene.u, scene.v, scene.horizon
    sky_name = list(SKIES)[int(rng.integers(len(SKIES)))]
    top, bottom = (_colour(c, rng) for c in SKIES[sky_name])
    t = np.clip(v / h, 0, 1)[:, :, None] ** 0.8
    sky = top + t * (bottom - top) + 0.03 * _smooth_noise(rng, s, 3)[:, :, None]
    ground_name = list(GROUNDS)[int(rng.integers(len(GROUNDS)))]
    rgb, texture = GROUNDS[ground_name]
    depth = np.clip((v - h) / (1 - h), 0, 1)[:, :, None]
    ground = _colour(rgb, rng) * (0.75 + 0.35 * depth + 0.08 * scene.light * (u[:, :, None] - 0.5))
    fine = _smooth_noise(rng, s, max(4, s // 3))
    if ground_name == "water":  # horizontal ripples
        fine = np.repeat(_smooth_noise(rng, s, max(4, s // 3))[:, :1], s, axis=1) * 0.6 + 0.4 * fine
    ground = ground * (1 + texture * (0.6 * fine + 0.4 * _smooth_noise(rng, s, 5)))[:, :, None]
    edge = np.clip((v - h) * s + 0.5, 0, 1)[:, :, None]
    image = sky + edge * (ground - sky)
    return image, f"on {ground_name} under {_a(sky_name)} sky"


def _room(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """An indoor background: a softly lit wall above a coloured floor."""
    s, u, v, h = scene.size, scene.u, scene.v, scene.horizon
    names = list(COLOURS)
    wall_name, floor_name = (names[int(i)] for i in rng.choice(len(names), 2, replace=False))
    wall = 0.35 + 0.5 * _colour(COLOURS[wall_name], rng)  # muted, never white
    floor = _colour(COLOURS[floor_name], rng)
    glow = np.exp(-((u - 0.5 - 0.3 * scene.light) ** 2 + (v - 0.1) ** 2) / 0.25)[:, :, None]
    wall_img = wall * (0.7 + 0.25 * glow) * (1 + 0.04 * _smooth_noise(rng, s, 6)[:, :, None])
    depth = np.clip((v - h) / (1 - h), 0, 1)[:, :, None]
    floor_img = floor * (0.65 + 0.4 * depth) * (1 + 0.08 * _smooth_noise(rng, s, max(4, s // 4))[:, :, None])
    edge = np.clip((v - h) * s + 0.5, 0, 1)[:, :, None]
    image = wall_img + edge * (floor_img - wall_img)
    return image, f"on {_a(floor_name)} floor by {_a(wall_name)} wall"


# rendered scenes: objects
def _shadow(image: np.ndarray, scene: _Scene, cx: float, base: float, r: float) -> None:
    """Darken the ground under an object with a soft elliptical shadow, cast away from the light."""
    dx = (scene.u - cx + scene.light * r * 0.5) / (r * 1.3)
    dy = (scene.v - base) / (r * 0.35)
    image *= (1 - 0.4 * np.exp(-(dx ** 2 + dy ** 2) * 1.5))[:, :, None]


def _shade_x(scene: _Scene, cx: float, half: np.ndarray | float) -> np.ndarray:
    """Lambert shading of a vertical round surface (cylinder, cone) across its width."""
    nx = np.clip((scene.u - cx) / np.maximum(half, 1e-3), -1, 1)
    nz = np.sqrt(1 - nx ** 2)
    lam = np.clip(-scene.light * 0.6 * nx + 0.8 * nz, 0, 1)
    return (0.3 + 0.75 * lam + 0.25 * lam ** 12)[:, :, None]


def _ball(image: np.ndarray, scene: _Scene, colour: np.ndarray, cx: float, base: float, r: float) -> None:
    """A sphere with diffuse shading and a specular highlight."""
    cy = base - r
    dx, dy = (scene.u - cx) / r, (scene.v - cy) / r
    nz = np.sqrt(np.clip(1 - dx ** 2 - dy ** 2, 0, 1))
    lx, ly, lz = -0.55 * scene.light, -0.6, 0.58
    lam = np.clip(dx * lx + dy * ly + nz * lz, 0, 1)
    spec = np.clip(lam, 0, 1) ** 30
    shaded = colour * (0.25 + 0.85 * lam)[:, :, None] + 0.5 * spec[:, :, None]
    m = _mask(scene.size, ("ellipse", [cx - r, cy - r, cx + r, cy + r]))
    _blend(image, m, shaded)


def _box(image: np.ndarray, scene: _Scene, colour: np.ndarray, cx: float, base: float, r: float) -> None:
    """A box seen from above and to one side: front, top and side faces with different light."""
    w, hgt, d = r * 0.9, r * 1.5, r * 0.45
    sx = -scene.light * d  # the side face turns towards the light's far side
    x0, x1, y0, y1 = cx - w, cx + w, base - hgt, base
    front = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    top = [(x0, y0), (x1, y0), (x1 + sx, y0 - d), (x0 + sx, y0 - d)]
    xs = x1 if sx > 0 else x0
    side = [(xs, y0), (xs + sx, y0 - d), (xs + sx, y1 - d), (xs, y1)]
    grad = (1 - 0.15 * np.clip((scene.v - y0) / hgt, 0, 1))[:, :, None]
    for poly, light in ((side, 0.45), (top, 1.05), (front, 0.8)):
        m = _mask(scene.size, ("polygon", poly))
        _blend(image, m, colour * light * grad)


def _cylinder(image: np.ndarray, scene: _Scene, colour: np.ndarray, cx: float, base: float, r: float) -> None:
    """An upright cylinder: round-shaded body and a lighter top ellipse."""
    w, hgt, e = r * 0.75, r * 1.8, r * 0.25
    top_y = base - hgt
    body = _mask(scene.size, ("rectangle", [cx - w, top_y, cx + w, base - e]),
                 ("ellipse", [cx - w, base - 2 * e, cx + w, base]))
    _blend(image, body, colour * _shade_x(scene, cx, w))
    cap = _mask(scene.size, ("ellipse", [cx - w, top_y - e, cx + w, top_y + e]))
    _blend(image, cap, colour * 1.1)


def _cone(image: np.ndarray, scene: _Scene, colour: np.ndarray, cx: float, base: float, r: float) -> None:
    """An upright cone: a triangle on a half ellipse, shaded across its width."""
    w, hgt, e = r * 0.85, r * 2.0, r * 0.22
    apex = base - e - hgt
    m = _mask(scene.size, ("polygon", [(cx, apex), (cx + w, base - e), (cx - w, base - e)]),
              ("ellipse", [cx - w, base - 2 * e, cx + w, base]))
    half = w * np.clip((scene.v - apex) / hgt, 0.02, 1)
    _blend(image, m, colour * _shade_x(scene, cx, half))


DRAWERS = {"ball": _ball, "box": _box, "cylinder": _cylinder, "cone": _cone}


def _objects(image: np.ndarray, scene: _Scene, rng: np.random.Generator) -> str:
    """Draw one to three objects, far ones first, and return their caption phrase."""
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    bases = np.sort(rng.uniform(scene.horizon + 0.12, 0.95, n))
    slots = rng.permutation(n)
    phrases = []
    for i, base in enumerate(bases):
        kind = OBJECTS[int(rng.integers(len(OBJECTS)))]
        name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        r = (0.08 + 0.12 * (base - scene.horizon) / (1 - scene.horizon)) * rng.uniform(0.9, 1.4)
        cx = (slots[i] + rng.uniform(0.25, 0.75)) / n
        cx = float(np.clip(cx, r, 1 - r))
        _shadow(image, scene, cx, float(base), r)
        DRAWERS[kind](image, scene, _colour(COLOURS[name], rng), cx, float(base), float(r))
        phrases.append(f"{_a(name)} {kind}")
    return " and ".join(phrases)


def _render_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A rendered shaded scene with one to three objects, blur and sensor noise."""
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(pix, pix)
    scene = _Scene(size, u, v, float(rng.uniform(0.3, 0.55)), float(rng.choice([-1.0, 1.0])))
    background = _room if rng.uniform() < 0.4 else _sky_ground
    image, where = background(scene, rng)
    image = image.astype(np.float32)
    what = _objects(image, scene, rng)
    image = image * rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3)  # exposure and white balance
    image = np.clip(image * 255 + rng.normal(0, 3.0, image.shape), 0, 230).astype(np.uint8)
    pil = Image.fromarray(image).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 0.7))))
    noisy = np.asarray(pil, np.float32) + rng.normal(0, 2.0, image.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), f"a photo of {what} {where}"


def render_base_image(
    index: int, size: int = 64, seed: int = 0, photo_share: float = PHOTO_SHARE
) -> tuple[Image.Image, str]:
    """Render base-world image ``index`` (RGB, ``size`` x ``size``) and return it with its caption.

    A photo crop with probability ``photo_share``, else a rendered scene.  Randomness comes from
    ``numpy.random.default_rng([seed, index])``, so every image is independent of the others.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng([seed, index])
    if rng.uniform() < photo_share:
        return _photo_crop(rng, size)
    return _render_scene(rng, size)


def make_base_dataset(
    n: int, size: int = 64, seed: int = 0, photo_share: float = PHOTO_SHARE
) -> tuple[np.ndarray, list[str]]:
    """Images ``0 .. n-1`` of the base world as a uint8 array (n, size, size, 3), and their captions."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.empty((n, size, size, 3), np.uint8)
    captions: list[str] = []
    for i in range(n):
        image, caption = render_base_image(i, size=size, seed=seed, photo_share=photo_share)
        images[i] = np.asarray(image)
        captions.append(caption)
    return images, captions
