"""transferlab: which pretrained backbone and which adaptation paradigm works best on your images.

    import transferlab
    transferlab.study("examples/quickstart.yaml")          # the grid, leaderboard and report
    transferlab.run("digits", "tf_efficientnet_lite0", "linear")   # one cell
    transferlab.search("examples/search.yaml")             # Optuna over the spec's search: space
    transferlab.predict("runs/quickstart/runs/<id>.json", ["photos/"])     # then: export, prune, quantize, serve
"""

import sys
import types

from .api import export, inspect, lr_find, predict, prune, quantize, report, run, search, serve, study
from .core.errors import TransferlabError

__version__ = "0.1.0"
__all__ = ["TransferlabError", "__version__", "export", "inspect", "lr_find", "predict", "prune", "quantize", "report",
           "run", "search", "serve", "study"]


class _Package(types.ModuleType):
    """Keeps `transferlab.study` (and search, report, inspect) the API functions: Python's import system sets a
    package attribute to each submodule it loads, so the first call, which imports `transferlab.study` the
    module, would otherwise turn the second `transferlab.study(...)` into "'module' object is not callable"."""

    def __setattr__(self, name: str, value) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
