"""The judge interface: decides whether a concept is visible in images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WatchedConcept:
    """A concept whose presence is measured in generated images or frames."""

    # Stable identifier shared by concept configs and detectors, e.g. "eiffel", "tokyo_tower".
    key: str
    # Text that names the concept, for CLIP probes and the CLIP judge.
    probe: str
    # Texts that name what an image shows instead when the concept is absent (CLIP judge only).
    anchors: tuple[str, ...] = field(default_factory=tuple)


class Judge(ABC):
    """Decides per image whether a concept is present."""

    @abstractmethod
    def detect(self, images: np.ndarray, concept: WatchedConcept) -> np.ndarray:
        """Return a bool array `(n,)`: whether `concept` is visible in each uint8 image `(n, h, w, 3)`."""

    def supports(self, concept: WatchedConcept) -> bool:
        """Return whether this judge can decide on `concept` at all."""
        return True

    def detect_all(self, images: np.ndarray) -> dict[str, np.ndarray] | None:
        """Return `{concept key: bool (n,)}` for every concept on the judge's list, or None.

        Judges with a fixed concept list (the toy world's detector) override this, and the
        evaluation then records which concepts a video shows besides the watched one. None means
        the judge decides only on the concept it is given.
        """
        return None
