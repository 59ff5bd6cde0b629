"""Opening one image file as the RGB picture a person would see, or a one-line reason why not.

PIL does the decoding; this module adds what `Image.open(path).convert("RGB")` gets wrong for a
classifier: EXIF orientation (phone photos stored sideways), 16-bit images (PIL's conversion clips them
to white instead of scaling), transparency (PIL drops alpha and leaves whatever colour sits under
transparent pixels, often black; a viewer shows them on white), and a decompression-bomb limit whose
message says how to raise it.
"""

from __future__ import annotations

import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default (a 1024 × 1024 × 3 × 32 bomb guard)


class UnreadableImage(Exception):
    """An image that cannot be decoded; carries the file (or item) name and the reason."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: cannot read image ({reason})")
        self.where, self.reason = where, reason


def open_image(path: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode `path` (a file name or a binary file object) as RGB with EXIF orientation applied; UnreadableImage
    names the file and the reason. `formats` restricts the decoders PIL may try (e.g. what a web upload can
    be); the pixel limit is this call's own."""
    try:
        with warnings.catch_warnings(), _pil_limit_at_least(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=formats) as image:
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
        allowed = f" ({', '.join(formats)} accepted)" if formats else ""
        raise UnreadableImage(str(path), f"not an image file PIL recognises{allowed} (empty, or another format "
                              "renamed)") from None
    except Image.DecompressionBombError as exc:  # PIL's own guard, at twice its limit, spoke before ours
        size = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(size.group(1)):,} pixels" if size else "the image"
        raise UnreadableImage(str(path), f"{pixels} is over the decompression-bomb limit of {max_pixels:,}; if "
                              "the image is genuine, raise data.max_pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnreadableImage(str(path), str(exc) or type(exc).__name__) from None


_PIL_LIMIT = threading.Lock()


@contextmanager
def _pil_limit_at_least(max_pixels: int):
    """PIL refuses, at open, images over twice its process-wide MAX_IMAGE_PIXELS, before our own check can
    look at them. Within PIL's range (the default) nothing changes; a larger limit raises PIL's for the one
    open, under a lock, and puts it back (so the process never runs without a bomb guard)."""
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= 2 * Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


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
