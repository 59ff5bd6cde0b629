"""Opening one image file as the RGB picture a person would see, or a one-line reason why not.

PIL does the decoding; this module adds what `Image.open(path).convert("RGB")` gets wrong for a
classifier: EXIF orientation (phone photos stored sideways), 16-bit images (PIL's conversion clips them
to white instead of scaling), transparency (PIL drops alpha and leaves whatever colour sits under
transparent pixels, often black; a viewer shows them on white), and a decompression-bomb limit whose
message says how to raise it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default (a 1024 × 1024 × 3 × 32 bomb guard)


class UnreadableImage(Exception):
    """An image that cannot be decoded; carries the file (or item) name and the reason."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: cannot read image ({reason})")
        self.where, self.reason = where, reason


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` as RGB with EXIF orientation applied; UnreadableImage names the file and the reason."""
    # PIL refuses images over 2 × its global limit before we can look at them; ours decides instead.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise UnreadableImage(str(path), f"{image.width}×{image.height} = {pixels:,} pixels is over the "
                                          f"decompression-bomb limit of {max_pixels:,}; if the image is genuine, "
                                          "raise data.max_pixels")
                image.load()  # decode now: a truncated file fails here, inside the try
                return to_rgb(ImageOps.exif_transpose(image))
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(str(path), "not an image file PIL recognises (empty, or another format "
                              "renamed)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(str(path), str(exc) or type(exc).__name__) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: high bit depths scaled (not clipped), transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_8bit(np.asarray(image), sixteen_bit=image.mode.startswith("I;16"))).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's conversions are right


def _to_8bit(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """16/32-bit integer or float pixels → uint8 by the range they declare (16-bit: /257) or reach."""
    kind = values.dtype.kind
    values = values.astype(np.float64)
    top = values.max() if values.size else 0
    if sixteen_bit or 255 < top <= 65535:
        full_scale = 65535  # a fixed scale for 16-bit data, so images of one dataset stay comparable
    elif kind == "f" and top <= 1:
        full_scale = 1.0  # float images in [0, 1] (depth maps, microscopy)
    else:
        full_scale = 255 if top <= 255 else top
    return np.clip(np.round(values * (255 / full_scale)), 0, 255).astype(np.uint8)
