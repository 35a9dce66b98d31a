"""One face from an image file: decode, clip the box, crop and resize. The one path for faces.

The crop cache (`trainer.data.crops`) makes every training face with `read_image` + `crop_face`, and
``fer-search predict`` makes the face it predicts with the very same two functions, so a face
predicted from a file is the face the model would have been trained on (no train/serve skew).

`read_image` also sorts the ways a file can fail to be an image into a few kinds
(`trainer.data.problems.IMAGE_PROBLEMS`), which ``data check`` counts and ``run`` summarises.

An image with more than `MAX_PIXELS` pixels is refused from its header, before a byte of it is
decoded: a few KB of PNG can declare 13000 x 13000 pixels (half a GB once decoded to RGB), and
Pillow's own guard only warns below 179 M pixels. Refused images are ``corrupt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.data.expw import clip_region
from trainer.data.problems import CORRUPT, MISSING, NOT_AN_IMAGE, TRUNCATED, ZERO_BYTE
from trainer.errors import DataError

Box = tuple[int, int, int, int]  # (top, left, right, bottom): label.lst's order
# The most pixels a photo holding faces may have: 50 M (8660 x 5773), 150 MB decoded to RGB.
# ExpW's photos are well under 1 M; a 48 MP camera's full-size shots still pass.
MAX_PIXELS = 50_000_000


class UnreadableImage(DataError):
    """An image file that cannot be decoded; ``kind``: one of
    `trainer.data.problems.IMAGE_PROBLEMS`."""

    def __init__(self, path: Path, kind: str, detail: str = "") -> None:
        self.path = Path(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: expected a readable image, found it {kind}"
                         + (f" ({detail})" if detail else ""))


def read_image(path: str | Path) -> Image.Image:
    """Decodes an image file fully into RGB.

    Raises:
        UnreadableImage: the file is missing, empty, truncated, not an image or corrupt.
    """
    return _decode(Path(path), lambda img: img.convert("RGB"))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, decoding it fully as `read_image` does (a truncated
    file is found only by decoding it), without keeping its pixels.

    Raises:
        UnreadableImage: as `read_image`.
    """
    return _decode(Path(path), lambda img: img.size)


def _decode(path: Path, then):
    try:
        with Image.open(path) as img:
            _check_pixels(img)  # from the header, before anything is decoded
            img.load()  # decode now: a truncated file fails here, not later in resize
            return then(img)
    except FileNotFoundError:
        raise UnreadableImage(path, MISSING) from None
    except IsADirectoryError:
        raise UnreadableImage(path, NOT_AN_IMAGE, "a folder") from None
    except UnidentifiedImageError:
        kind = ZERO_BYTE if _size(path) == 0 else NOT_AN_IMAGE
        raise UnreadableImage(path, kind) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow reports corrupt data as OSError, ValueError or SyntaxError by format plugin;
        # a file cut short says so in its message ("image file is truncated", "Truncated ...").
        text = str(err)
        kind = TRUNCATED if "truncat" in text.lower() else CORRUPT
        raise UnreadableImage(path, kind, text[:200]) from None


def _check_pixels(img: Image.Image) -> None:
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height:,} pixels, more than the {MAX_PIXELS:,} an "
            f"image of faces may have; refused before decoding"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def crop_face(image: Image.Image, box: Box | None, size: int, margin: float = 0.0
              ) -> np.ndarray | None:
    """The face in ``box`` as a uint8 RGB array (size, size, 3), as the model takes it.

    Args:
        image: an RGB image (see `read_image`).
        box: (top, left, right, bottom), clipped to the image; None crops the whole image.
        size: side of the square face.
        margin: context around the box, a fraction of its size per side (see
            `trainer.data.expw.clip_region`).

    Returns:
        The face, or None when the box is empty or lies entirely outside the image.
    """
    region = clip_region(box, image.width, image.height, margin)
    if region is None:
        return None
    top, left, bottom, right = region
    # resize(box=...) crops and resizes in one pass; bilinear with Pillow's support scaling
    # averages over the source pixels when shrinking, so small faces do not alias.
    face = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
    return np.asarray(face, dtype=np.uint8)
