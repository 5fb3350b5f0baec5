"""Synthetic photos for the latency benchmark: deterministic, yet costly to decode like real ones.

A flat or purely random picture would lie about decode time: JPEG spends its effort on detail,
so a flat image decodes too fast and white noise too slowly, and both give file sizes no camera
makes. These photos mix what a phone picture holds (smooth lighting gradients, a few objects with
sharp edges, mid-frequency texture like fur or grass, and a little sensor noise), which puts the
JPEG at about 200 KB per megapixel, as phone photos are. The same seed gives the same picture
everywhere (numpy's PCG64 stream; a platform's `sin` may move a pixel by one level), and the JPEG
bytes are the local libjpeg's encoding of it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# 4:3, as most phone cameras shoot; labels are what latency.json calls the photo sizes.
PHOTO_SIZES: dict[str, tuple[int, int]] = {
    "0.3mp": (640, 480),
    "1mp": (1152, 864),
    "4mp": (2304, 1728),
}
JPEG_QUALITY = 90
_TEXTURE_CELL = 4  # the texture is drawn at 1/4 resolution and scaled up: detail of a few pixels
_SHAPES = 9


@dataclass(frozen=True)
class Photo:
    """One synthetic JPEG and what it stands for."""

    label: str
    width: int
    height: int
    jpeg: bytes

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def kilobytes(self) -> float:
        return len(self.jpeg) / 1024

    def describe(self) -> dict[str, float | int | str]:
        """What the report says about the photo."""
        return {"label": self.label, "width": self.width, "height": self.height,
                "megapixels": round(self.megapixels, 3), "jpeg_kb": round(self.kilobytes, 1)}


def synthetic_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 array `[height, width, 3]` that looks photographic to a JPEG codec."""
    rng = np.random.Generator(np.random.PCG64(seed))
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), dtype=np.float32)
    for channel in range(3):
        # Lighting: a tilted plane plus two slow waves.
        plane = rng.uniform(60, 170) + rng.uniform(-50, 50) * x + rng.uniform(-50, 50) * y
        for _ in range(2):
            fx, fy, phase = rng.uniform(0.3, 2.5), rng.uniform(0.3, 2.5), rng.uniform(0, 2 * np.pi)
            plane = plane + rng.uniform(10, 30) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        image[:, :, channel] = plane
    _draw_shapes(image, x, y, rng)
    image += _texture(width, height, rng)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(3.0)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shapes(image: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    """Ellipses of flat-ish colour with hard edges: the edges are what costs JPEG bits."""
    aspect = image.shape[1] / image.shape[0]
    for _ in range(_SHAPES):
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        rx = rng.uniform(0.04, 0.2)
        ry = rx * aspect * rng.uniform(0.5, 1.5)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        colour = rng.uniform(20, 235, size=3).astype(np.float32)
        shade = np.broadcast_to(1.0 - 0.3 * (y - cy) / ry, inside.shape)[inside]  # lit from above
        for channel in range(3):
            image[:, :, channel][inside] = colour[channel] * shade


def _texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise (fur, grass, foliage): random cells scaled up smoothly."""
    small_w, small_h = max(1, width // _TEXTURE_CELL), max(1, height // _TEXTURE_CELL)
    cells = rng.standard_normal(size=(small_h, small_w), dtype=np.float32)
    scaled = Image.fromarray(cells, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    luminance = np.asarray(scaled, dtype=np.float32) * 14.0
    tint = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    return luminance[:, :, None] * tint[None, None, :]


def synthetic_jpeg(width: int, height: int, seed: int = 0, quality: int = JPEG_QUALITY) -> bytes:
    """The photo as JPEG bytes (baseline, 4:2:0 chroma subsampling, as cameras write)."""
    buffer = io.BytesIO()
    Image.fromarray(synthetic_pixels(width, height, seed), mode="RGB").save(
        buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()


def photo_set(labels: tuple[str, ...] = tuple(PHOTO_SIZES)) -> tuple[Photo, ...]:
    """The benchmark's photos, one per size label, each from its own seed."""
    photos = []
    for seed, label in enumerate(labels):
        width, height = PHOTO_SIZES[label]
        photos.append(Photo(label, width, height, synthetic_jpeg(width, height, seed=seed)))
    return tuple(photos)
