"""The kinds of faces a dataset cannot give, counted per kind with the first few file names.

Both the crop cache (what ``run`` skipped) and ``data check`` (which opens every image) tally
problems with `ProblemTally`, so both speak of them in the same words:

- image files: missing, zero-byte, truncated, not an image, corrupt (`IMAGE_PROBLEMS`);
- boxes: empty as annotated (zero or negative size), or lying entirely outside the image, so
  that clipping leaves nothing (`BOX_PROBLEMS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MISSING, ZERO_BYTE, TRUNCATED, NOT_AN_IMAGE, CORRUPT = (
    "missing", "zero-byte", "truncated", "not an image", "corrupt",
)
IMAGE_PROBLEMS = (MISSING, ZERO_BYTE, TRUNCATED, NOT_AN_IMAGE, CORRUPT)
EMPTY_BOX, OUTSIDE_IMAGE = "empty box", "box outside its image"
BOX_PROBLEMS = (EMPTY_BOX, OUTSIDE_IMAGE)
KINDS = IMAGE_PROBLEMS + BOX_PROBLEMS
MAX_EXAMPLES = 5


def box_problem(box: tuple[int, int, int, int]) -> str:
    """Why a (top, left, right, bottom) box that crops to nothing does: empty as annotated, or
    lying entirely outside its image."""
    top, left, right, bottom = box
    return EMPTY_BOX if bottom <= top or right <= left else OUTSIDE_IMAGE


@dataclass
class Problem:
    """One kind of problem: how many files and faces, and the first few file names."""

    files: int = 0
    faces: int = 0
    examples: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set, repr=False)


@dataclass
class ProblemTally:
    """Problems by kind (`KINDS`), in the order they were met."""

    kinds: dict[str, Problem] = field(default_factory=dict)

    def add(self, kind: str, name: str, faces: int = 1) -> None:
        """Counts ``faces`` faces lost to ``kind`` in file ``name`` (a file counts once)."""
        problem = self.kinds.setdefault(kind, Problem())
        if name not in problem.seen:  # several bad boxes in one image: one file
            problem.seen.add(name)
            problem.files += 1
            if len(problem.examples) < MAX_EXAMPLES:
                problem.examples.append(name)
        problem.faces += faces

    @property
    def faces(self) -> int:
        return sum(p.faces for p in self.kinds.values())

    def to_dict(self) -> dict[str, dict]:
        """JSON-able, in `KINDS` order: ``{kind: {"files", "faces", "examples"}}``."""
        return {
            kind: {"files": p.files, "faces": p.faces, "examples": list(p.examples)}
            for kind in KINDS if (p := self.kinds.get(kind)) is not None
        }


_PHRASES = {
    MISSING: "whose image is missing",
    ZERO_BYTE: "in zero-byte images",
    TRUNCATED: "in truncated images",
    NOT_AN_IMAGE: "in files that are not images",
    CORRUPT: "in corrupt images",
    EMPTY_BOX: "with an empty box",
    OUTSIDE_IMAGE: "with a box outside its image",
}


def describe(problems: dict[str, dict]) -> str:
    """``2 in truncated images (img_001.jpg, img_009.jpg); 1 with a box outside its image
    (img_007.jpg)``: each kind's face count and first two file names."""
    parts = []
    for kind, p in problems.items():
        names = ", ".join(p["examples"][:2]) + (", ..." if p["files"] > 2 else "")
        parts.append(f"{p['faces']} {_PHRASES.get(kind, kind)} ({names})")
    return "; ".join(parts)


def summary(problems: dict[str, dict], total_faces: int) -> str | None:
    """One line: how many faces were skipped and why, e.g. ``skipped 3 of 105 faces: 2 in
    truncated images (img_001.jpg); 1 with a box outside its image (img_007.jpg)``; None if
    none were."""
    skipped = sum(p["faces"] for p in problems.values())
    if not skipped:
        return None
    return f"skipped {skipped} of {total_faces} faces: {describe(problems)}"
