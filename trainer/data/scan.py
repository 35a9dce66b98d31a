"""``data check``'s pass over a dataset's images: open every one, check every box.

The crop cache finds the same problems while it crops (`trainer.data.crops`), but only for the image
size it builds and only once; ``data check`` is the command whose job is to look, so it decodes
every referenced image (in parallel: Pillow releases the GIL while decoding) without cropping or
writing anything, and tallies what is wrong by kind (`trainer.data.problems`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.data.expw import FaceRecord, clip_region
from trainer.data.faces import UnreadableImage, image_size
from trainer.data.problems import ProblemTally, box_problem

Progress = Callable[[int, int], None]  # (images done, images in all)


def scan_images(
    image_dir: Path,
    records: Sequence[FaceRecord],
    margin: float = 0.0,
    *,
    workers: int | None = None,
    on_progress: Progress | None = None,
) -> tuple[ProblemTally, set[tuple[str, int]]]:
    """Decodes every image ``records`` name and checks each face's box against it.

    Returns:
        (the problems found, the (image name, line number) of every face lost to one).
    """
    by_image: dict[str, list[FaceRecord]] = {}
    for record in records:
        by_image.setdefault(record.image_name, []).append(record)
    names = list(by_image)
    tally = ProblemTally()
    lost: set[tuple[str, int]] = set()
    workers = max(1, min(workers or os.cpu_count() or 1, len(names) or 1))

    def look(name: str) -> tuple[int, int] | UnreadableImage:
        try:
            return image_size(image_dir / name)
        except UnreadableImage as err:
            return err

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data-check") as pool:
        # map keeps the input order, so "the first few file names" follow label.lst's order.
        for done, (name, found) in enumerate(zip(names, pool.map(look, names), strict=True), 1):
            faces = by_image[name]
            if isinstance(found, UnreadableImage):
                tally.add(found.kind, name, len(faces))
                lost.update((name, f.line_no) for f in faces)
            else:
                width, height = found
                for face in faces:
                    if clip_region(face.box, width, height, margin) is None:
                        tally.add(box_problem(face.box), name)
                        lost.add((name, face.line_no))
            if on_progress is not None:
                on_progress(done, len(names))
    return tally, lost
