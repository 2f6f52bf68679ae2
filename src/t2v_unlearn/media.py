"""Writers for the files people look at: mp4 videos, frame grids and image grids."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from t2v_unlearn.io import atomic_file


def sample_frame_indices(num_frames: int, count: int = 5) -> np.ndarray:
    """Return `count` frame indices spread uniformly from the first to the last frame."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    return np.unique(np.linspace(0, num_frames - 1, count).round().astype(int))


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, min_side: int = 128) -> None:
    """Write uint8 frames `(f, h, w, 3)` as an H.264 mp4, upscaled with nearest neighbour.

    Small toy-world frames are enlarged so players and W&B show them at a visible size, and to
    an even size, which H.264 requires.
    """
    frames = _upscale(frames, min_side)
    with atomic_file(path) as tmp:
        # imageio's ffmpeg plugin uses the ffmpeg binary that the imageio-ffmpeg wheel ships.
        iio.imwrite(tmp, frames, plugin="FFMPEG", extension=".mp4", fps=fps, codec="libx264",
                    macro_block_size=1)


def write_frame_grid(path: str | Path, frames: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Write uint8 frames `(f, h, w, 3)` side by side as one PNG; returns the grid."""
    grid = np.concatenate(list(_upscale(frames, min_side)), axis=1)
    write_png(path, grid)
    return grid


def write_png(path: str | Path, image: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def image_grid(images: np.ndarray, columns: int = 4, min_side: int = 128) -> np.ndarray:
    """Tile uint8 images `(n, h, w, 3)` into one image with `columns` per row."""
    images = _upscale(images, min_side)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def _upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    factor = max(1, -(-min_side // min(h, w)))
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    # H.264 with yuv420p needs even sides.
    h, w = frames.shape[1:3]
    return frames[:, : h - h % 2, : w - w % 2]

