"""Data: sources (what images exist) → splits (which go where) → views (how a model sees them)."""

from .builtins import BUILTINS
from .images import UnreadableImage, open_image
from .pools import open_pools
from .sources import ArraySource, FileSource, FolderSource, ImageSource, Pools
from .splits import Split, make_splits, split_sizes

__all__ = ["BUILTINS", "ArraySource", "FileSource", "FolderSource", "ImageSource", "Pools", "Split",
           "UnreadableImage", "make_splits", "open_image", "open_pools", "split_sizes"]
