"""Few-shot concept unlearning in the text encoder shared by text-to-image and text-to-video models."""

__version__ = "0.1.0"
