"""A synthetic ExpW: procedurally drawn faces in the real ExpW layout, for quickstarts and tests.

The real ExpW cannot be downloaded everywhere (CI, offline machines), so this module writes a
stand-in with the same on-disk format::

    <out>/label.lst          one face a line: image_name face_id top left right bottom score label
    <out>/image/origin/*.jpg the photos
    <out>/synthetic.json     what generated it (so a rerun with the same arguments is a no-op)

Each face is drawn with Pillow from a handful of geometric parameters (mouth curve and opening,
brow height and slant, eye opening, wrinkles). The expression class sets the parameters' means;
per-face intensity and jitter make the classes overlap, and skin tone, hair, glasses, size,
position, tilt, background clutter, noise and JPEG quality vary independently of the class. The
difficulty is tuned so that a frozen, randomly initialised VGG16 plus a small head lands well above
chance and well below 100% at 48x48 pixels, which leaves room for hyperparameters to matter.

The real quirks the reader must cope with are imitated too: several faces per photo, boxes that
run past the image edge, raw detector scores (0.2 to 140) and ExpW-like class imbalance on request.
Unlike real ExpW, whose image names often repeat the search query ("angry_actor_104.jpg"), the
names here are drawn independently of the faces' labels, so they give nothing away.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.errors import ConfigError, DataError
from trainer.files.atomic import atomic_dir, remove_stale_temps
from trainer.files.lock import file_lock
from trainer.labels import CLASS_NAMES, NUM_CLASSES

__all__ = [
    "EXPW_CLASS_SHARES",
    "GENERATOR_VERSION",
    "IMAGE_SUBDIR",
    "LABEL_FILE",
    "MANIFEST_NAME",
    "SKIN_TONES",
    "class_counts",
    "generate_synthetic_expw",
]

# Bump when the same arguments would produce different files: an existing set made by another
# version is then reported as different instead of being silently reused.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
# Every generated file's mtime (2020-01-01 UTC). The crop cache's key counts image sizes and
# mtimes (`trainer.data.crops.survey_images`): with equal bytes and equal mtimes, workers that
# each generate their own copy on their own machine share one crop and feature cache.
GENERATED_MTIME_NS = 1_577_836_800 * 10**9
LABEL_FILE = "label.lst"
IMAGE_SUBDIR = Path("image") / "origin"
_FORMAT = "fer-search synthetic ExpW"

# Face counts per class in the real ExpW (91,793 faces), in label order.
_EXPW_COUNTS = (3671, 3995, 1088, 30537, 10559, 7060, 34883)
EXPW_CLASS_SHARES: tuple[float, ...] = tuple(c / sum(_EXPW_COUNTS) for c in _EXPW_COUNTS)

# Light to dark; a face's tone is drawn between two neighbours, then jittered.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 128),
    (198, 134, 92),
    (160, 100, 64),
    (118, 72, 44),
    (84, 52, 34),
)
_HAIR_COLOURS = ((20, 16, 14), (58, 38, 26), (104, 70, 40), (186, 150, 96), (140, 140, 140),
                 (120, 52, 28))
_IRIS_COLOURS = ((50, 32, 20), (90, 60, 30), (60, 90, 130), (70, 100, 70), (20, 20, 20))

_QUERY_WORDS = ("angry", "happy", "sad", "scared", "surprised", "disgusted", "smiling", "crying",
                "laughing", "shocked", "calm", "serious", "excited", "upset", "furious", "worried",
                "bored", "proud", "tired", "nervous")
_QUERY_NOUNS = ("actor", "actress", "man", "woman", "child", "baby", "crowd", "family", "people",
                "girl", "boy", "student", "teacher", "player", "politician", "friends", "fans",
                "singer", "worker", "couple")

_SUPERSAMPLE = 2  # faces are drawn at twice their size and downsampled, for antialiasing
_FACES_PER_IMAGE_P = (0.5, 0.3, 0.2)  # 1, 2 or 3 faces in a photo
_EDGE_FACE_P = 0.05  # share of faces whose box runs past the image edge
_MIN_WIDTH, _MAX_WIDTH = 160, 320
# Where the drawn face sits in its detector box: standard deviations of its size (relative), of its
# centre (in box sides) and of its tilt (degrees).
_SCALE_SD, _CENTRE_SD, _TILT_SD = 0.035, 0.018, 3.5


# --------------------------------------------------------------------------------------------
# Expression geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Expression:
    """The geometric parameters that carry a face's expression (1.0 / 0.0 is a relaxed face)."""

    mouth_curve: float = 0.0  # +1 corners up (smile) .. -1 corners down (frown)
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    mouth_width: float = 1.0  # relative to a relaxed mouth
    lip_raise: float = 0.0  # upper lip pulled up on one side (sneer)
    brow_raise: float = 0.0  # +1 raised .. -1 lowered
    brow_slant: float = 0.0  # +1 inner ends up (sad, fear) .. -1 inner ends down (angry)
    brow_pinch: float = 0.0  # inner ends pulled towards each other
    eye_open: float = 1.0  # relative to relaxed eyes
    nose_wrinkle: float = 0.0
    forehead_lines: float = 0.0
    frown_lines: float = 0.0  # vertical lines between the brows
    smile_lines: float = 0.0  # nose-to-mouth-corner folds


_NEUTRAL = _Expression()

# Prototypes follow the facial action units of each basic emotion (FACS), exaggerated enough to
# survive a 48-pixel crop.
_PROTOTYPES: dict[str, _Expression] = {
    "angry": _Expression(mouth_curve=-0.25, mouth_width=0.78, brow_raise=-0.8, brow_slant=-1.0,
                         brow_pinch=0.8, eye_open=0.85, frown_lines=0.9, nose_wrinkle=0.2),
    "disgust": _Expression(mouth_curve=-0.45, mouth_open=0.12, mouth_width=0.9, lip_raise=1.0,
                           brow_raise=-0.45, brow_slant=-0.3, brow_pinch=0.3, eye_open=0.6,
                           nose_wrinkle=1.0),
    "fear": _Expression(mouth_curve=-0.2, mouth_open=0.35, mouth_width=1.25, brow_raise=0.7,
                        brow_slant=0.7, brow_pinch=0.4, eye_open=1.5, forehead_lines=0.6),
    "happy": _Expression(mouth_curve=0.9, mouth_open=0.2, mouth_width=1.2, brow_raise=0.1,
                         eye_open=0.7, smile_lines=0.8),
    "sad": _Expression(mouth_curve=-0.7, mouth_width=0.9, brow_raise=0.15, brow_slant=0.9,
                       eye_open=0.75),
    "surprise": _Expression(mouth_open=0.95, mouth_width=0.62, brow_raise=1.0, eye_open=1.55,
                            forehead_lines=0.8),
    "neutral": _NEUTRAL,
}

# Per-face jitter (standard deviation at jitter=1) and the valid range of every parameter.
_JITTER_SD: dict[str, float] = {
    "mouth_curve": 0.2, "mouth_open": 0.08, "mouth_width": 0.1, "lip_raise": 0.15,
    "brow_raise": 0.25, "brow_slant": 0.25, "brow_pinch": 0.2, "eye_open": 0.15,
    "nose_wrinkle": 0.15, "forehead_lines": 0.15, "frown_lines": 0.15, "smile_lines": 0.15,
}
_RANGE: dict[str, tuple[float, float]] = {
    "mouth_curve": (-1.2, 1.2), "mouth_open": (0.0, 1.2), "mouth_width": (0.5, 1.5),
    "lip_raise": (0.0, 1.3), "brow_raise": (-1.2, 1.3), "brow_slant": (-1.3, 1.3),
    "brow_pinch": (-0.5, 1.2), "eye_open": (0.35, 1.8), "nose_wrinkle": (0.0, 1.3),
    "forehead_lines": (0.0, 1.3), "frown_lines": (0.0, 1.3), "smile_lines": (0.0, 1.3),
}
_INTENSITY = (0.7, 1.2)  # how far a face moves from neutral towards its class prototype

# How far each parameter moves the drawing, in box sides at parameter value 1; `stroke` scales
# every line width. Together with the jitter and nuisance these set the task's difficulty.
_AMPLITUDE: dict[str, float] = {
    "mouth_half_width": 0.2, "mouth_lift": 0.1, "mouth_half_open": 0.11,
    "brow_raise": 0.09, "brow_slant": 0.08, "eye_half_height": 0.055, "stroke": 1.6,
}


def _sample_expression(rng: np.random.Generator, label: int, jitter: float) -> _Expression:
    """Draws one face's expression: its class prototype at a random intensity, plus jitter.

    Weak intensities drift towards neutral and the jitter blurs every boundary, so the classes
    overlap a little, as they do in real photos.
    """
    proto = _PROTOTYPES[CLASS_NAMES[label]]
    intensity = rng.uniform(*_INTENSITY)
    values = {}
    for f in fields(_Expression):
        base = getattr(_NEUTRAL, f.name)
        value = base + intensity * (getattr(proto, f.name) - base)
        value += jitter * _JITTER_SD[f.name] * rng.standard_normal()
        low, high = _RANGE[f.name]
        values[f.name] = float(np.clip(value, low, high))
    expression = _Expression(**values)
    if CLASS_NAMES[label] == "happy" and rng.random() < 0.4:
        # Many smiles in photos are grins: open mouth, teeth showing.
        expression = replace(expression, mouth_open=min(expression.mouth_open + 0.3, 1.2))
    return expression


# --------------------------------------------------------------------------------------------
# Planning: labels, photos, boxes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FacePlan:
    label: int
    top: int
    left: int
    side: int  # the detector box is side x side
    confidence: float


@dataclass(frozen=True)
class _ImagePlan:
    name: str
    width: int
    height: int
    faces: tuple[_FacePlan, ...]


def class_counts(faces: int, *, imbalance: bool = False) -> tuple[int, ...]:
    """How many faces of each class a synthetic set of `faces` faces holds, in label order.

    Balanced sets split the faces as evenly as possible. Imbalanced sets follow the real ExpW
    shares, but every class keeps a floor (1 to 5 faces, growing with the set) so that even tiny
    sets can be stratified.

    Args:
        faces: total number of faces, at least one per class.
        imbalance: follow ExpW's class shares instead of equal shares.

    Returns:
        One count per class, summing to `faces`.
    """
    shares = np.array(EXPW_CLASS_SHARES if imbalance else [1.0 / NUM_CLASSES] * NUM_CLASSES)
    floor = int(np.clip(faces // 20, 1, 5)) if imbalance else faces // NUM_CLASSES
    ideal = shares * faces
    counts = np.maximum(np.floor(ideal).astype(int), floor)
    remainder = ideal - np.floor(ideal)
    # Largest-remainder apportionment, then take any excess from the largest classes.
    for i in np.argsort(-remainder, kind="stable"):
        if counts.sum() >= faces:
            break
        counts[i] += 1
    while counts.sum() > faces:
        counts[int(np.argmax(counts))] -= 1
    return tuple(int(c) for c in counts)


def _plan_labels(rng: np.random.Generator, faces: int, imbalance: bool) -> np.ndarray:
    counts = class_counts(faces, imbalance=imbalance)
    labels = np.repeat(np.arange(NUM_CLASSES), counts)
    return rng.permutation(labels)


def _plan_images(
    rng: np.random.Generator, labels: np.ndarray, min_face: int, max_face: int
) -> list[_ImagePlan]:
    """Groups the faces into photos of 1-3 faces and places a detector box for each."""
    plans: list[_ImagePlan] = []
    start = 0
    while start < len(labels):
        n = min(int(rng.choice(3, p=_FACES_PER_IMAGE_P)) + 1, len(labels) - start)
        sides = [int(rng.integers(min_face, max_face + 1)) for _ in range(n)]
        name = f"{rng.choice(_QUERY_WORDS)}_{rng.choice(_QUERY_NOUNS)}_{len(plans)}.jpg"
        plans.append(_place_faces(rng, name, labels[start:start + n], sides))
        start += n
    return plans


def _place_faces(
    rng: np.random.Generator, name: str, labels: np.ndarray, sides: list[int]
) -> _ImagePlan:
    """Lays the faces out left to right, one per slot, so that their boxes never overlap.

    Photos are 160-320 pixels wide, wider only when three large faces need the room.
    """
    gap = int(0.35 * max(sides))  # room for ears and hair between neighbours
    needed = sum(sides) + gap * (len(sides) + 1)
    width = int(rng.integers(max(_MIN_WIDTH, needed), max(_MAX_WIDTH, needed) + 1))
    low_h = max(sides) + 2 * gap
    height = int(rng.integers(max(low_h, int(0.6 * width)), max(low_h, int(1.1 * width)) + 1))

    spare = width - needed
    cuts = np.sort(rng.uniform(0, spare, size=len(sides)))
    faces = []
    x = gap
    for i, (label, side) in enumerate(zip(labels, sides, strict=True)):
        # Each slot gets a random share of the spare width; the face sits anywhere inside it.
        slack = int(cuts[i] - (cuts[i - 1] if i else 0))
        left = x + int(rng.integers(0, slack + 1))
        top = int(rng.integers(0, height - side + 1))
        if rng.random() < _EDGE_FACE_P:
            top, left = _push_past_edge(rng, top, left, side, width, height,
                                        first=i == 0, last=i == len(sides) - 1)
        faces.append(_FacePlan(int(label), top, left, side, _confidence(rng, side, top, left,
                                                                         width, height)))
        x += slack + side + gap
    return _ImagePlan(name, width, height, tuple(faces))


def _push_past_edge(
    rng: np.random.Generator, top: int, left: int, side: int, width: int, height: int,
    *, first: bool, last: bool,
) -> tuple[int, int]:
    """Moves a box so that 8-35% of it lies outside the photo, as detector boxes often do."""
    edges = ["top", "bottom"] + (["left"] if first else []) + (["right"] if last else [])
    edge = edges[int(rng.integers(len(edges)))]
    over = max(1, int(rng.uniform(0.08, 0.35) * side))
    if edge == "top":
        return -over, left
    if edge == "bottom":
        return height - side + over, left
    if edge == "left":
        return top, -over
    return top, width - side + over


def _confidence(
    rng: np.random.Generator, side: int, top: int, left: int, width: int, height: int
) -> float:
    """A raw detector score in [0.2, 140]: lower for small faces and faces cut by the edge."""
    score = math.exp(rng.normal(3.2, 0.8)) * min(1.0, side / 72)
    if top < 0 or left < 0 or top + side > height or left + side > width:
        score *= rng.uniform(0.1, 0.6)
    return float(np.clip(score, 0.2, 140.0))


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _lerp(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))


def _skin_tone(rng: np.random.Generator) -> tuple[int, int, int]:
    i = int(rng.integers(len(SKIN_TONES) - 1))
    tone = np.array(_lerp(SKIN_TONES[i], SKIN_TONES[i + 1], rng.random()), dtype=float)
    tone += rng.normal(0, 6, size=3)
    return tuple(int(v) for v in np.clip(tone, 0, 255))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered backdrop: a linear gradient under random shapes, sometimes out of focus."""
    angle = rng.uniform(0, 2 * math.pi)
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy = np.arange(height, dtype=np.float32)[:, None]
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    c0 = np.array(_random_colour(rng), np.float32)
    c1 = np.array(_random_colour(rng), np.float32)
    pixels = c0 + (c1 - c0) * t[..., None]
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 13))):
        _draw_clutter(rng, draw, width, height)
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    return image


def _draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    colour = _random_colour(rng)
    x0, x1 = sorted(int(v) for v in rng.integers(-w // 4, w + w // 4, size=2))
    y0, y1 = sorted(int(v) for v in rng.integers(-h // 4, h + h // 4, size=2))
    kind = int(rng.integers(4))
    if kind == 0:
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    elif kind == 1:
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif kind == 2:
        draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 8)))
    else:
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
        draw.polygon(points, fill=colour)


@dataclass(frozen=True)
class _Look:
    """A face's identity: everything that varies between people but not with the expression."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int] | None
    fringe: float  # degrees; larger is a lower fringe
    iris: tuple[int, int, int]
    half_width: float  # in box sides
    half_height: float
    eye_dx: float
    eye_y: float
    eye_w: float
    brow_gap: float
    nose_y: float
    mouth_y: float
    glasses: bool
    moustache: bool
    gaze: float
    light_angle: float
    light_strength: float


def _sample_look(rng: np.random.Generator) -> _Look:
    has_hair = rng.random() < 0.8
    return _Look(
        skin=_skin_tone(rng),
        hair=_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))] if has_hair else None,
        fringe=float(rng.uniform(45, 70)),
        iris=_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))],
        half_width=0.43 * (1 + rng.normal(0, 0.04)),
        half_height=0.56 * (1 + rng.normal(0, 0.04)),
        eye_dx=rng.normal(0.19, 0.012),
        eye_y=rng.normal(-0.08, 0.015),
        eye_w=rng.normal(0.075, 0.006),
        brow_gap=rng.normal(0.1, 0.01),
        nose_y=rng.normal(0.13, 0.012),
        mouth_y=rng.normal(0.30, 0.015),
        glasses=bool(rng.random() < 0.1),
        moustache=bool(rng.random() < 0.08),
        gaze=float(rng.normal(0, 0.012)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0, 0.3)),
    )


class _Canvas:
    """Face-relative drawing: x, y in box sides from the face centre, y pointing down."""

    def __init__(self, size: int, unit: float) -> None:
        self.image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.centre = size / 2
        self.unit = unit

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.centre + x * self.unit, self.centre + y * self.unit)

    def box(self, cx: float, cy: float, rx: float, ry: float) -> list[float]:
        (x0, y0), (x1, y1) = self.pt(cx - rx, cy - ry), self.pt(cx + rx, cy + ry)
        return [x0, y0, x1, y1]

    def width(self, w: float) -> int:
        return max(1, int(round(w * _AMPLITUDE["stroke"] * self.unit)))

    def line(self, points: list[tuple[float, float]], colour: tuple, w: float) -> None:
        self.draw.line([self.pt(x, y) for x, y in points], fill=colour, width=self.width(w),
                       joint="curve")


def _shade(colour: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _draw_face(rng: np.random.Generator, side: int, expr: _Expression, look: _Look) -> Image.Image:
    """Draws one face, centred, on a transparent RGBA patch of 1.6 box sides (at final scale)."""
    size = int(math.ceil(1.6 * side)) * _SUPERSAMPLE
    canvas = _Canvas(size, side * _SUPERSAMPLE)
    _draw_head(canvas, look)
    _draw_eyes(canvas, expr, look)
    _draw_brows(canvas, expr, look)
    _draw_nose(canvas, expr, look)
    _draw_mouth(rng, canvas, expr, look)
    _draw_wrinkles(canvas, expr, look)
    _draw_fringe(canvas, look)
    patch = _light(canvas.image, look)
    return patch.resize((size // _SUPERSAMPLE, size // _SUPERSAMPLE), Image.Resampling.LANCZOS)


def _draw_head(c: _Canvas, look: _Look) -> None:
    a, b = look.half_width, look.half_height
    ear = _shade(look.skin, 0.9)
    for sx in (-1, 1):
        c.draw.ellipse(c.box(sx * a * 0.97, look.eye_y + 0.06, 0.06, 0.1), fill=ear)
    if look.hair is not None:
        c.draw.ellipse(c.box(0, -0.06, a * 1.1, b * 1.02), fill=look.hair)
    c.draw.ellipse(c.box(0, 0, a, b), fill=look.skin)


def _draw_fringe(c: _Canvas, look: _Look) -> None:
    # A chord across the top of the head, drawn last so it covers forehead lines as hair does;
    # it stays above even the most raised brows.
    if look.hair is not None:
        a, b = look.half_width, look.half_height
        c.draw.chord(c.box(0, -0.02, a * 1.04, b * 1.04), 180 + look.fringe, 360 - look.fringe,
                     fill=look.hair)


def _draw_eyes(c: _Canvas, expr: _Expression, look: _Look) -> None:
    half_h = _AMPLITUDE["eye_half_height"] * expr.eye_open
    iris_r = 0.036
    lid = _shade(look.skin, 0.45)
    for sx in (-1, 1):
        ex, ey = sx * look.eye_dx, look.eye_y
        c.draw.ellipse(c.box(ex, ey, look.eye_w, half_h), fill=(240, 238, 232))
        # The iris is squashed by narrow lids; wide-open eyes show white above and below it.
        c.draw.ellipse(c.box(ex + look.gaze, ey, iris_r, min(iris_r, half_h * 0.95)),
                       fill=look.iris)
        c.draw.ellipse(c.box(ex + look.gaze, ey, 0.014, min(0.014, half_h * 0.5)),
                       fill=(10, 10, 10))
        c.draw.arc(c.box(ex, ey, look.eye_w, half_h), 180, 360, fill=lid, width=c.width(0.018))
        c.draw.arc(c.box(ex, ey, look.eye_w, half_h), 0, 180, fill=lid, width=c.width(0.008))
        if look.glasses:
            c.draw.ellipse(c.box(ex, ey, 0.12, 0.085), outline=(30, 30, 30), width=c.width(0.015))
    if look.glasses:
        c.line([(-look.eye_dx + 0.12, look.eye_y), (look.eye_dx - 0.12, look.eye_y)],
               (30, 30, 30), 0.015)


def _draw_brows(c: _Canvas, expr: _Expression, look: _Look) -> None:
    colour = look.hair if look.hair is not None else _shade(look.skin, 0.4)
    base = look.eye_y - look.brow_gap - _AMPLITUDE["brow_raise"] * expr.brow_raise
    inner_x = 0.075 - 0.03 * expr.brow_pinch
    inner_y = base - _AMPLITUDE["brow_slant"] * expr.brow_slant
    for sx in (-1, 1):
        inner = (sx * inner_x, inner_y)
        middle = (sx * (inner_x + 0.3) / 2 + sx * 0.04, base - 0.02)
        outer = (sx * 0.31, base + 0.01)
        c.line([inner, middle, outer], colour, 0.032)


def _draw_nose(c: _Canvas, expr: _Expression, look: _Look) -> None:
    colour = _shade(look.skin, 0.62)
    y = look.nose_y - 0.02 * expr.nose_wrinkle  # a wrinkled nose is pulled up
    flare = 0.055 + 0.015 * expr.nose_wrinkle
    c.line([(-0.02, look.eye_y + 0.04), (-0.03, y - 0.03)], _shade(look.skin, 0.85), 0.012)
    for sx in (-1, 1):
        c.line([(sx * flare, y - 0.02), (sx * 0.035, y + 0.01), (sx * 0.012, y + 0.005)],
               colour, 0.016)


def _mouth_curves(
    expr: _Expression, look: _Look, sneer_side: int, n: int = 9
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The upper and lower lip lines, corner to corner, as (x, y) point lists."""
    w = _AMPLITUDE["mouth_half_width"] * expr.mouth_width
    lift = _AMPLITUDE["mouth_lift"] * expr.mouth_curve  # how far the corners sit above the middle
    half_open = _AMPLITUDE["mouth_half_open"] * expr.mouth_open
    upper, lower = [], []
    for i in range(n):
        u = -1 + 2 * i / (n - 1)
        centre = look.mouth_y + lift * (1 - u * u) - lift  # corners at mouth_y - lift
        bulge = 1 - u * u
        # A sneer lifts the upper lip on one side only.
        sneer = 0.045 * expr.lip_raise * bulge * max(0.0, 0.5 + 0.5 * u * sneer_side)
        upper.append((u * w, centre - half_open * bulge - sneer))
        lower.append((u * w, centre + half_open * bulge))
    return upper, lower


def _draw_mouth(rng: np.random.Generator, c: _Canvas, expr: _Expression, look: _Look) -> None:
    lip = _lerp(_shade(look.skin, 0.62), (150, 40, 50), 0.35)
    sneer_side = 1 if rng.random() < 0.5 else -1
    upper, lower = _mouth_curves(expr, look, sneer_side)
    if look.moustache and look.hair is not None:
        # A band following the upper lip, drawn first so the lip stays visible under it.
        c.draw.polygon([c.pt(x * 1.1, y - 0.02) for x, y in upper]
                       + [c.pt(x * 0.9, y - 0.065) for x, y in reversed(upper)],
                       fill=look.hair)
    gap = max(abs(a[1] - b[1]) for a, b in zip(upper, lower, strict=True))
    if gap > 0.012:
        c.draw.polygon([c.pt(*p) for p in upper + lower[::-1]], fill=(45, 12, 16))
        if expr.mouth_curve > 0.3:
            teeth = min(gap * 0.45, 0.035)
            c.draw.polygon([c.pt(*p) for p in upper]
                           + [c.pt(x, y + teeth) for x, y in reversed(upper)],
                           fill=(235, 232, 220))
        c.line(upper, lip, 0.022)
        c.line(lower, lip, 0.028)
    else:
        c.line(upper, lip, 0.03)


def _draw_wrinkles(c: _Canvas, expr: _Expression, look: _Look) -> None:
    def colour(strength: float) -> tuple[int, ...]:
        return _lerp(look.skin, _shade(look.skin, 0.5), float(np.clip(strength, 0, 1)))

    if expr.forehead_lines > 0.2:
        top = look.eye_y - look.brow_gap - _AMPLITUDE["brow_raise"] * expr.brow_raise - 0.07
        for k in range(3):
            y = top - 0.04 * k
            c.line([(-0.16, y + 0.01), (0, y - 0.005), (0.16, y + 0.01)],
                   colour(expr.forehead_lines), 0.011)
    if expr.frown_lines > 0.2:
        y = look.eye_y - look.brow_gap
        for sx in (-1, 1):
            c.line([(sx * 0.025, y - 0.06), (sx * 0.03, y + 0.02)], colour(expr.frown_lines),
                   0.013)
    if expr.nose_wrinkle > 0.2:
        for k in range(2):
            y = look.eye_y + 0.07 + 0.025 * k
            c.line([(-0.05, y), (0, y - 0.012), (0.05, y)], colour(expr.nose_wrinkle), 0.012)
    if expr.smile_lines > 0.2:
        w = _AMPLITUDE["mouth_half_width"] * expr.mouth_width
        y_corner = look.mouth_y - _AMPLITUDE["mouth_lift"] * expr.mouth_curve
        for sx in (-1, 1):
            c.line([(sx * 0.07, look.nose_y - 0.01), (sx * (w + 0.035), (look.nose_y + y_corner)
                    / 2 + 0.01), (sx * (w + 0.03), y_corner + 0.03)],
                   colour(expr.smile_lines), 0.013)


def _light(patch: Image.Image, look: _Look) -> Image.Image:
    """Shades the face with a linear light falloff, so faces are not flat colour."""
    if look.light_strength < 0.02:
        return patch
    pixels = np.asarray(patch).astype(np.float32)
    size = pixels.shape[0]
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    t = ramp[None, :] * math.cos(look.light_angle) + ramp[:, None] * math.sin(look.light_angle)
    pixels[..., :3] *= (1 + look.light_strength * t)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGBA")


# --------------------------------------------------------------------------------------------
# Rendering a photo
# --------------------------------------------------------------------------------------------


def _render_image(rng: np.random.Generator, plan: _ImagePlan, jitter: float) -> Image.Image:
    image = _background(rng, plan.width, plan.height)
    for face in plan.faces:
        _paste_face(rng, image, face, jitter)
    pixels = np.asarray(image).astype(np.float32)
    sigma = np.float32(rng.uniform(1, 8))  # sensor noise, before the JPEG artefacts
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _paste_face(rng: np.random.Generator, image: Image.Image, face: _FacePlan,
                jitter: float) -> None:
    """Draws the face whose detector box is `face` and pastes it, tilted, onto the photo."""
    # The detector box is a noisy frame around the face, not its exact extent.
    scale = float(np.clip(rng.normal(1.0, _SCALE_SD), 0.85, 1.15))
    drawn = max(8, int(round(face.side * scale)))
    patch = _draw_face(rng, drawn, _sample_expression(rng, face.label, jitter), _sample_look(rng))
    patch = patch.rotate(float(rng.normal(0, _TILT_SD)), resample=Image.Resampling.BICUBIC)
    cx = face.left + face.side / 2 + rng.normal(0, _CENTRE_SD) * face.side
    cy = face.top + face.side / 2 + rng.normal(-0.02, _CENTRE_SD) * face.side
    image.paste(patch, (int(round(cx - patch.width / 2)), int(round(cy - patch.height / 2))),
                patch)


# --------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------


def _check_args(faces: int, seed: int, min_face: int, max_face: int, jitter: float) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(faces) or faces < NUM_CLASSES:
        raise ConfigError("faces", f"an integer >= {NUM_CLASSES} (one per class)", faces)
    if not is_int(seed) or seed < 0:
        raise ConfigError("seed", "an integer >= 0", seed)
    if not is_int(min_face) or not 16 <= min_face <= 256:
        raise ConfigError("min_face", "an integer in [16, 256]", min_face)
    if not is_int(max_face) or not min_face <= max_face <= 256:
        raise ConfigError("max_face", f"an integer in [min_face={min_face}, 256]", max_face)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 5:
        raise ConfigError("jitter", "a number in [0, 5]", jitter)


def _manifest(args: dict[str, Any]) -> dict[str, Any]:
    return {"format": _FORMAT, "generator_version": GENERATOR_VERSION, "args": args}


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _FORMAT else None


def _check_existing(out: Path, wanted: dict[str, Any]) -> bool:
    """True when `out` already holds the wanted set; False when it is free (absent or empty).

    Raises:
        DataError: `out` holds anything else, which is never overwritten.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; refusing to write a synthetic ExpW "
                        "set there")
    found = _read_manifest(out)
    if found is None:
        if not any(out.iterdir()):
            return False
        raise DataError(f"{out} exists and is not a synthetic ExpW set (no valid {MANIFEST_NAME});"
                        " refusing to overwrite it. Choose another folder or delete this one")
    if {k: found.get(k) for k in ("generator_version", "args")} != \
            {k: wanted[k] for k in ("generator_version", "args")}:
        raise DataError(
            f"{out} holds a synthetic ExpW set made with different arguments "
            f"({_describe_difference(found, wanted)}); refusing to overwrite it. Choose another "
            "folder or delete this one"
        )
    if not (out / LABEL_FILE).is_file() or not (out / IMAGE_SUBDIR).is_dir():
        raise DataError(f"{out} has a {MANIFEST_NAME} but no {LABEL_FILE} or {IMAGE_SUBDIR}; "
                        "it was modified after generation. Delete it and generate again")
    return True


def _describe_difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    if found.get("generator_version") != wanted["generator_version"]:
        return (f"generator version {found.get('generator_version')}, now "
                f"{wanted['generator_version']}")
    old = found.get("args") if isinstance(found.get("args"), dict) else {}
    diffs = [f"{k}={old.get(k)!r}, wanted {v!r}" for k, v in wanted["args"].items()
             if old.get(k) != v]
    return "; ".join(diffs) or "unreadable arguments"


def _write_dataset(root: Path, args: dict[str, Any]) -> None:
    """Writes label.lst and every photo into `root` (a fresh, private folder)."""
    rng = np.random.default_rng([args["seed"], 0])
    labels = _plan_labels(rng, args["faces"], args["imbalance"])
    plans = _plan_images(rng, labels, args["min_face"], args["max_face"])
    image_dir = root / IMAGE_SUBDIR
    image_dir.mkdir(parents=True)
    lines = []
    for index, plan in enumerate(plans):
        # One generator per photo: a photo's pixels depend only on the seed and its index.
        image_rng = np.random.default_rng([args["seed"], 1, index])
        image = _render_image(image_rng, plan, args["jitter"])
        quality = int(image_rng.integers(60, 96))
        image.save(image_dir / plan.name, format="JPEG", quality=quality)
        for face_id, face in enumerate(plan.faces):
            lines.append(f"{plan.name} {face_id} {face.top} {face.left} {face.left + face.side} "
                         f"{face.top + face.side} {face.confidence:.4f} {face.label}\n")
    (root / LABEL_FILE).write_text("".join(lines), encoding="utf-8")


def generate_synthetic_expw(
    out: Path | str,
    faces: int,
    seed: int = 0,
    *,
    imbalance: bool = False,
    min_face: int = 48,
    max_face: int = 96,
    jitter: float = 1.0,
) -> Path:
    """Writes a synthetic ExpW set of exactly `faces` faces to `out`, or reuses the one there.

    The same arguments always give the same bytes (label.lst and every JPEG) and the same mtimes
    (`GENERATED_MTIME_NS`), so copies generated apart share caches. The set is written
    into a temporary folder beside `out` and renamed into place, so `out` either holds a complete
    set or does not exist; a ``synthetic.json`` manifest beside label.lst records the arguments.
    Processes asking for the same set at once take turns through a lock file beside `out`
    (``.<name>.lock``, left in place); the later ones reuse the first one's set.

    Args:
        out: the dataset's folder; it must not exist, be empty, or hold this very set.
        faces: number of faces (lines of label.lst), at least 7 so every class is present.
        seed: seeds everything drawn.
        imbalance: ExpW's class shares (neutral 38%, happy 33%, ..., fear 1.2%) with a floor of a
            few faces per class, instead of equal shares.
        min_face: smallest face box side in pixels.
        max_face: largest face box side in pixels.
        jitter: scales the per-face random variation of every expression parameter; higher
            makes the classes overlap more, 0 leaves only the intensity and nuisance variation.

    Returns:
        `out`, as a Path.

    Raises:
        ConfigError: an argument is out of range.
        DataError: `out` exists and holds something else (another set, other files).
    """
    out = Path(out)
    _check_args(faces, seed, min_face, max_face, jitter)
    args = {"faces": faces, "seed": seed, "imbalance": bool(imbalance), "min_face": min_face,
            "max_face": max_face, "jitter": float(jitter)}
    manifest = _manifest(args)
    if _check_existing(out, manifest):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (workers sharing data/) may ask for the same set: the second waits for
    # the first and then reuses its result.
    with file_lock(out.parent / f".{out.name}.lock"):
        if _check_existing(out, manifest):
            return out
        remove_stale_temps(out)
        with atomic_dir(out) as tmp:
            _write_dataset(tmp, args)
            # The manifest goes last: a folder holding one is complete.
            (tmp / MANIFEST_NAME).write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
            for path in tmp.rglob("*"):
                if path.is_file():
                    os.utime(path, ns=(GENERATED_MTIME_NS, GENERATED_MTIME_NS))
    if not _check_existing(out, manifest):  # pragma: no cover - atomic_dir guarantees a folder
        raise DataError(f"{out} was not written")
    return out
