"""The no-transfer reference row: logistic regression on raw pixels (what a backbone has to beat)."""

from __future__ import annotations

from pydantic import Field

from ..data.sources import ArraySource, ImageSource
from ..features import PixelEncoder
from .base import Paradigm, register
from .linear import Linear, LinearParams

DEFAULT_PIXEL_SIZE = 32  # for folders of mixed sizes; array datasets keep their native size


class PixelsParams(LinearParams):
    size: int | None = Field(None, ge=4, description="images resized to size×size; default: native or 32")


@register
class Pixels(Linear):
    name = "pixels"
    Params = PixelsParams
    needs_backbone = False

    def deploy_steps(self):  # its inputs are resized pixels, not a backbone's features
        return Paradigm.deploy_steps(self)

    def encoder(self, source: ImageSource) -> PixelEncoder:
        native = isinstance(source, ArraySource)
        size = self.params.size or (source.images.shape[1] if native else DEFAULT_PIXEL_SIZE)
        return PixelEncoder(size, grayscale=native and source.images.ndim == 3)
