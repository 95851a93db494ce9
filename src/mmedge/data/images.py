"""Image decoding and preprocessing with Pillow and numpy (no torch), as the manifest describes it."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmedge.errors import ImageDecodeError, InputPathError


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw pixels become the model's ``image`` input.

    The model receives pixels scaled to [0, 1]; mean/std normalization happens inside the graph
    (``normalize_in_graph``) so that an app cannot forget it.
    """

    height: int = 28
    width: int = 28
    channels: int = 1
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)
    normalize_in_graph: bool = True
    foreground: str = "light-on-dark"

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "color": "grayscale" if self.channels == 1 else "rgb",
            "layout": "NCHW",
            "resize": "bilinear",
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "normalize_in_graph": self.normalize_in_graph,
            "foreground": self.foreground,
        }

    @classmethod
    def from_json(cls, d: dict) -> ImagePreprocessing:
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            channels=int(d["channels"]),
            scale=float(d["scale"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            normalize_in_graph=bool(d["normalize_in_graph"]),
            foreground=d.get("foreground", "light-on-dark"),
        )


def decode_failures() -> tuple[type[BaseException], ...]:
    """What Pillow raises for a file that does not decode, an image over its decompression-bomb pixel limit included
    (between one and two times the limit Pillow only warns: open images inside ``bombs_refused``)."""
    from PIL import Image, UnidentifiedImageError

    return (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    )


@contextlib.contextmanager
def bombs_refused():
    """Pillow's decompression-bomb warning raised as an error inside the block."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def as_8bit(img):
    """A PIL image with 16- or 32-bit integer pixels scaled to 8 bits (Pillow's own conversion clips them at 255:
    a 16-bit photo would turn white); other images as they are."""
    from PIL import Image

    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    pixels = np.asarray(img, dtype=np.float64)
    top = 255.0 if img.mode == "I" and pixels.max(initial=0) <= 255 else 65535.0
    return Image.fromarray(np.clip(np.round(pixels * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def load_image(path: str | Path, prep: ImagePreprocessing, invert: bool = False) -> np.ndarray:
    """Decode an image file into float32 (1, C, H, W) as the model expects."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"image file {path} does not exist; pass the path of a PNG or JPEG file.")
    try:
        with bombs_refused(), Image.open(path) as img:
            img.load()
            if img.mode == "F":
                raise ImageDecodeError(
                    f"image {path} holds floating-point pixels, whose range is unknown; pass an 8- or 16-bit PNG, "
                    "JPEG or BMP file."
                )
            pixels = to_model_pixels(as_8bit(upright(img)), prep)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"image {path} has more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS:,}; a decompression "
            "bomb?); pass a smaller image."
        ) from None
    except decode_failures() as exc:
        raise ImageDecodeError(
            f"image {path} does not decode ({type(exc).__name__}); pass a valid PNG, JPEG or BMP file."
        ) from exc
    if invert:
        pixels = 255.0 - pixels
    return finish_pixels(pixels[None] * np.float32(prep.scale), prep)


def upright(img):
    """A PIL image turned as its EXIF orientation tag says: phones store pictures sideways and set that tag, so
    without it a portrait photo reaches the model rotated (the file's other pixels are unchanged)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def to_model_pixels(image, prep: ImagePreprocessing) -> np.ndarray:
    """A PIL image or uint8 array (H, W[, C]) as float32 (C, H, W) in 0..255: color mode and size of ``prep``."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    img = img.convert("L" if prep.channels == 1 else "RGB")
    if img.size != (prep.width, prep.height):
        img = img.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32)
    return pixels[None] if prep.channels == 1 else pixels.transpose(2, 0, 1)


def finish_pixels(x: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """Scaled pixels (B, C, H, W), normalized here unless the graph does it."""
    if not prep.normalize_in_graph:
        mean = np.asarray(prep.mean, np.float32)[:, None, None]
        std = np.asarray(prep.std, np.float32)[:, None, None]
        x = (x - mean) / std
    return x.astype(np.float32)


def looks_inverted(image: np.ndarray) -> bool:
    """True when the border of a (1, C, H, W) image in [0, 1] is bright: dark-on-light input."""
    img = image[0].mean(0)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return float(border.mean()) > 0.5


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write uint8 (H, W) gray or (H, W, 3) RGB pixels as a PNG."""
    from PIL import Image

    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
