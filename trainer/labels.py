"""The seven ExpW expressions, in label order (label.lst's 8th field is an index into this)."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
