"""Metrics agree with their definitions on small cases worked by hand."""

from __future__ import annotations

import numpy as np

from transferlab.evaluate import classification_metrics


def test_metrics_of_a_small_worked_example():
    y = np.array([0, 0, 1, 1, 2, 3])
    proba = np.array([[.7, .1, .1, .1], [.05, .6, .2, .15], [.1, .8, .05, .05],
                      [.1, .2, .3, .4], [.2, .1, .6, .1], [.25, .25, .2, .3]], dtype=np.float32)
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert m["accuracy"] == 4 / 6  # rows 0, 2, 4, 5 right
    assert m["top3_accuracy"] == 5 / 6  # only row 1 misses: its true class ranks 4th; row 3's ranks 3rd
    assert np.isclose(m["log_loss"], -np.mean(np.log([.7, .05, .8, .2, .6, .3])), atol=1e-6)
    assert [c["support"] for c in m["per_class"]] == [2, 2, 1, 1]
    assert m["confusion_matrix"][0] == [1, 1, 0, 0]
    assert np.isclose(m["macro_f1"], np.mean([c["f1"] for c in m["per_class"]]))
