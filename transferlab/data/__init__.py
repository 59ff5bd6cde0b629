"""Data: sources (what images exist) → splits (which go where) → views (how a model sees them)."""

from .sources import BUILTINS, ArraySource, FolderSource, ImageSource, Pools, UnreadableImage, open_pools
from .splits import Split, make_splits, split_sizes

__all__ = ["BUILTINS", "ArraySource", "FolderSource", "ImageSource", "Pools", "Split", "UnreadableImage",
           "make_splits", "open_pools", "split_sizes"]
