"""Write images of a source out as an image folder (`root/<class>/<n>.<ext>`).

For users who want a builtin dataset on disk, and for the tests and benchmarks, which build small real
image folders from Fashion-MNIST rather than drawing fake data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .sources import ImageSource


def export_image_folder(source: ImageSource, indices: np.ndarray, root: str | Path, *, size: int | None = None,
                        suffix: str = ".png", quality: int = 90) -> Path:
    root = Path(root)
    for index in indices:
        index = int(index)
        folder = root / _safe(source.classes[source.labels[index]])
        folder.mkdir(parents=True, exist_ok=True)
        image = source.load(index)
        if size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        options = {"quality": quality} if suffix in (".jpg", ".jpeg") else {}
        image.save(folder / f"{index:06d}{suffix}", **options)
    return root


def _safe(name: str) -> str:
    return name.replace("/", "-").replace("\\", "-")
