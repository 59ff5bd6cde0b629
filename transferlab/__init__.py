"""transferlab: which pretrained backbone and which adaptation paradigm works best on your images.

    import transferlab
    transferlab.study("examples/quickstart.yaml")          # the grid, leaderboard and report
    transferlab.run("digits", "tf_efficientnet_lite0", "linear")   # one cell
    transferlab.search("examples/search.yaml")             # Optuna over the spec's search: space
    transferlab.predict("runs/quickstart/runs/<id>.json", ["photos/"])     # then: export, prune, quantize, serve
"""

from .api import export, predict, prune, quantize, report, run, search, serve, study
from .core.errors import TransferlabError

__version__ = "0.1.0"
__all__ = ["TransferlabError", "__version__", "export", "predict", "prune", "quantize", "report", "run", "search",
           "serve", "study"]
