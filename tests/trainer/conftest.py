"""Tiny ExpW-format datasets made on the fly (JPEGs drawn with Pillow in tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from trainer.labels import NUM_CLASSES

# One colour per class: a face box is filled with its label's colour, so a crop's colour tells
# whether the box was read in the right order and the label from the right field.
CLASS_COLOURS = (
    (230, 20, 20),
    (20, 230, 20),
    (20, 20, 230),
    (230, 230, 20),
    (230, 20, 230),
    (20, 230, 230),
    (240, 240, 240),
)
BACKGROUND = (110, 110, 110)
IMAGE_SIDE = 64
# Two face slots per image, as (top, left, right, bottom): label.lst's order. Neither is square
# nor symmetric, so reading the fields in another order crops background into the face.
FACE_SLOTS = ((2, 8, 30, 22), (34, 40, 62, 60))


def save_jpeg(path: Path, image: Image.Image) -> None:
    """Saves with the least JPEG loss (no chroma subsampling) so colours survive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=100, subsampling=0)


def draw_image(
    size: tuple[int, int], boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]]
) -> Image.Image:
    """A ``size`` (width, height) image on grey with (top, left, right, bottom) boxes filled."""
    image = Image.new("RGB", size, BACKGROUND)
    for (top, left, right, bottom), colour in boxes:
        image.paste(colour, (left, top, right, bottom))
    return image


def face_line(name: str, face_id: int, box: tuple[int, int, int, int], conf: float, label: int
              ) -> str:
    top, left, right, bottom = box
    return f"{name} {face_id} {top} {left} {right} {bottom} {conf} {label}"


def write_expw(
    root: Path,
    images: int = 70,
    *,
    layout: str = "image/origin",
    label_place: str = "label.lst",
    skip_labels: tuple[int, ...] = (),
) -> list[str]:
    """Writes an ExpW-format dataset: ``images`` JPEGs with one or two coloured faces each.

    Image ``i`` is ``img_{i:03d}.jpg``; its faces have labels ``i % 7`` and, for odd ``i``,
    ``(i + 3) % 7``; confidences are ``1 + i``. Labels in ``skip_labels`` are left out.

    Returns:
        The label.lst lines written.
    """
    lines: list[str] = []
    for i in range(images):
        name = f"img_{i:03d}.jpg"
        labels = [i % NUM_CLASSES] + ([(i + 3) % NUM_CLASSES] if i % 2 else [])
        labels = [lab for lab in labels if lab not in skip_labels]
        faces = list(zip(FACE_SLOTS, labels, strict=False))
        save_jpeg(
            root / layout / name,
            draw_image((IMAGE_SIDE, IMAGE_SIDE), [(box, CLASS_COLOURS[lab]) for box, lab in faces]),
        )
        lines += [face_line(name, k, box, 1.0 + i, lab) for k, (box, lab) in enumerate(faces)]
    label_path = root / label_place
    label_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture
def expw_root(tmp_path: Path) -> Path:
    """A fresh 70-image, 105-face ExpW-format dataset (all 7 classes)."""
    root = tmp_path / "expw"
    write_expw(root)
    return root


@pytest.fixture
def make_expw(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_expw(name="expw", **write_expw_kwargs) -> root``."""

    def make(name: str = "expw", **kwargs: object) -> Path:
        root = tmp_path / name
        write_expw(root, **kwargs)
        return root

    return make
